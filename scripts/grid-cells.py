#!/usr/bin/env python3
"""Per-cell figures of a grid run (`cargo xtask reproduce --out DIR`): held-out accuracy with
and without C; by quarter of the run, the training reward, the KL to the reference (nats per
token) and the share of completions cut at the length limit; the median seconds per step; how
much C varies from prompt to prompt (its per-prompt RMS over its RMS) and the gates (mean and
largest) at the last step. Standard library only.

    python3 scripts/grid-cells.py runs/paper/cpu-real
"""
import glob
import json
import os
import statistics
import sys


def quarters(values):
    n = len(values)
    if n == 0:
        return []
    cuts = [round(n * q / 4) for q in range(5)]
    return [statistics.mean(values[a:b]) if b > a else float("nan") for a, b in zip(cuts, cuts[1:])]


def main(root):
    print(
        "| task | system | seed | accuracy | without C | train reward by quarter "
        "| KL by quarter | cut at the limit, by quarter | median s/step "
        "| C prompt-RMS / RMS (last step) | gates, mean (largest), last step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in sorted(glob.glob(os.path.join(root, "*", "*", "seed-*"))):
        task, system, seed = cell.split(os.sep)[-3:]
        metrics_path = os.path.join(cell, "metrics.jsonl")
        if not os.path.exists(metrics_path):
            continue
        with open(metrics_path) as f:
            steps = [json.loads(line) for line in f if line.strip()]
        if not steps:
            continue
        eval_path = os.path.join(cell, "eval.json")
        evaluation = json.load(open(eval_path)) if os.path.exists(eval_path) else {}
        rewards = [s["rollouts"]["reward_mean"] for s in steps]
        seconds = [s["step_seconds"] for s in steps]
        last = steps[-1]["diagnostics"]
        spread = (
            f"{last['context_prompt_rms'] / last['context_rms']:.3f}"
            if last.get("context_rms")
            else "–"
        )
        gates = (
            f"{last['context_gate_mean']:.2f} ({last['context_gate_max']:.2f})"
            if last.get("context_gate_mean") is not None
            else "–"
        )
        kl = [s["loss"]["kl"] for s in steps]
        cut = [s["rollouts"]["truncation_rate"] for s in steps]
        fmt = lambda v: "–" if v is None else f"{v:.3f}"
        by_quarter = lambda values, digits=3: ", ".join(f"{q:.{digits}f}" for q in quarters(values))
        print(
            f"| {task} | {system} | {seed[5:]} | {fmt(evaluation.get('accuracy'))} "
            f"| {fmt(evaluation.get('accuracy_without_context'))} "
            f"| {by_quarter(rewards)} | {by_quarter(kl)} | {by_quarter(cut, 2)} "
            f"| {statistics.median(seconds):.1f} | {spread} | {gates} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/paper/cpu-real")
