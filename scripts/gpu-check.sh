#!/usr/bin/env bash
# The GPU device check, the half that runs on the GPU machine (no Rust, no network): run from
# the repository root after `cargo xtask gpu-check` packed target/gpu-check here, e.g. with the
# device tool: command `bash scripts/gpu-check.sh`, carry ["target/gpu-check"].
#
# 1. the backend-generic tests on the GPU backend (exit status 1 if any fails);
# 2. the device's matmul rate and memory-read bandwidth (the decode roofline);
# 3. decode tokens/s at batch 1, 8 and 64 for each packed model (random weights of the real
#    shape), against batch x bandwidth / weight bytes;
# 4. seconds per GRPO step of configs/smollm2-team.toml, Burn's fusion on and off.
# Results: $OUT/gpu-check.md (and every log beside it). PACK overrides the pack folder.
# QUICK=1 shrinks everything to a smoke run (batch 1, 4 tokens, one tiny GRPO step, only the
# tests matching TESTS): for a dry run on lavapipe, where a 135M model decodes at ~0.2 tokens/s.
set -uo pipefail
pack=${PACK:-target/gpu-check}
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
report="$out/gpu-check.md"
backend=$(cat "$pack/backend")
work=$(mktemp -d)
started=$(date +%s)
quick=${QUICK:-0}
tests_filter=${TESTS:-$backend::}
if [ "$quick" = 1 ]; then
  batches="1"; new_tokens=4
  grpo_args=(--steps 1 --set grpo.prompts_per_step=1 --set grpo.num_generations=2
    --set grpo.max_completion_length=2 --set eval.problems=1)
else
  batches="1 8 64"; new_tokens=64
  grpo_args=()
fi
say() { printf '%s\n' "$*" | tee -a "$report"; }
elapsed() { echo "$(( $(date +%s) - started ))s"; }

unpack() {
  tar -C "$1" -xJf "$2" 2>/dev/null ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$2" "$1"
}
unpack "$work" "$pack/bin.tar.xz" || { echo "cannot unpack $pack/bin.tar.xz" >&2; exit 2; }
mkdir -p "$work/models" && unpack "$work/models" "$pack/models.tar.xz"
chmod +x "$work"/musketeers* "$work"/tests/*

# The test binaries read fixtures at the path they were built under.
build_root=$(cat "$pack/build-root")
if [ "$build_root" != "$PWD" ] && [ ! -e "$build_root" ]; then
  mkdir -p "$(dirname "$build_root")" && ln -s "$PWD" "$build_root"
fi

if [ "$backend" = cuda ]; then
  # cubecl loads libnvrtc at run time: find the one this image ships.
  nvrtc=$( { ls /usr/local/cuda*/lib64/libnvrtc.so* /usr/local/cuda*/targets/*/lib/libnvrtc.so* \
    /usr/lib/x86_64-linux-gnu/libnvrtc.so* 2>/dev/null;
    python3 - <<'EOF' 2>/dev/null
import glob, site
for base in site.getsitepackages():
    print("\n".join(glob.glob(base + "/nvidia/cu*/lib/libnvrtc.so*") + glob.glob(base + "/nvidia/cuda_nvrtc/lib/libnvrtc.so*")))
EOF
  } | head -1)
  [ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

: > "$report"
say "# GPU check: $backend"
say ""
say "- date: $(date -u +%FT%TZ)"
say "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
say "- nvrtc: ${nvrtc:-not searched}"
say ""
say "## Backend-generic tests"
failed=0
for test in "$work"/tests/*; do
  name=$(basename "$test")
  log="$out/test-$name.log"
  if timeout 600 "$test" "$tests_filter" > "$log" 2>&1; then verdict=ok; else verdict=FAILED; failed=1; fi
  say "- $name: $verdict: $(grep -E '^test result' "$log" | tail -1)"
  grep -E '^test .* FAILED$' "$log" | sed 's/^/  - /' | tee -a "$report"
done
say "(tests done at $(elapsed))"

say ""
say "## Device"
"$work/musketeers" device --device "$backend" --size 4096 > "$out/device.log" 2>&1
sed 's/^/    /' "$out/device.log" >> "$report"
read_gbs=$(grep -oE 'memory read at [0-9.]+' "$out/device.log" | grep -oE '[0-9.]+$')

say ""
say "## Decode (random weights of the real shape, f32, $new_tokens new tokens, sampled)"
say ""
say "| model | batch | decode tokens/s | roofline tokens/s | of roofline |"
say "|---|---|---|---|---|"
for dir in "$work"/models/*/; do
  model=$(basename "$dir")
  # MODELS (space-separated names) limits the set: wgpu caps one buffer at 256 MiB, below
  # Gemma 3's f32 embedding table (671 MB), so a dry run on lavapipe takes SmolLM2 only.
  [ -n "${MODELS:-}" ] && [[ " $MODELS " != *" $model "* ]] && continue
  "$work/musketeers" lm randomize --dir "$dir" > "$out/randomize-$model.log" 2>&1 || {
    say "| $model | - | randomize failed (see randomize-$model.log) | | |"; continue; }
  bytes=$(stat -c %s "$dir/model.safetensors")
  for batch in $batches; do
    log="$out/decode-$model-$batch.log"
    "$work/musketeers" lm generate --model "$dir" --device "$backend" --prompt "Once upon a time" \
      --max-new-tokens "$new_tokens" --temperature 1.0 --num-return-sequences "$batch" > "$log" 2>&1
    rate=$(grep -oE 'decode: [0-9]+ tokens at [0-9.]+' "$log" | grep -oE '[0-9.]+$')
    roof=""; share=""
    if [ -n "${read_gbs:-}" ]; then
      roof=$(python3 -c "print(f'{$batch * $read_gbs * 1e9 / $bytes:.0f}')")
      [ -n "${rate:-}" ] && share=$(python3 -c "print(f'{$rate / $roof:.2f}')")
    fi
    say "| $model | $batch | ${rate:-failed} | ${roof:-?} | ${share:-?} |"
  done
done
say "(decode done at $(elapsed))"

say ""
say "## GRPO steps: configs/smollm2-team.toml (random weights), 3 steps ${grpo_args[*]}"
# GRPO_DEVICE overrides the device (a dry run on lavapipe cannot hold Gemma 3's embedding).
for cli in musketeers musketeers-plain; do
  run="$work/run-$cli"
  if "$work/$cli" train --config "$pack/grpo.toml" --out "$run" --device "${GRPO_DEVICE:-$backend}" \
      --progress plain "${grpo_args[@]}" > "$out/grpo-$cli.log" 2>&1; then
    secs=$(python3 -c '
import json, sys
steps = [json.loads(l)["step_seconds"] for l in open(sys.argv[1]) if "step_seconds" in l]
later = steps[1:] or steps
print(f"{sum(later) / len(later):.2f} s/step (mean of steps 2-{len(steps)}; first {steps[0]:.2f} s)")
' "$run/metrics.jsonl" 2>/dev/null)
    say "- $cli: ${secs:-no metrics}"
  else
    say "- $cli: FAILED (see grpo-$cli.log)"; failed=1
  fi
done
say ""
say "done in $(elapsed); exit status $failed"
exit "$failed"
