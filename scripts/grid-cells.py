#!/usr/bin/env python3
"""Per-cell figures of a grid run (`cargo xtask reproduce --out DIR`): held-out accuracy with
and without C, the training reward by quarter of the run, the median seconds per step, and how
much C varies from prompt to prompt (its per-prompt RMS over its RMS). Standard library only.

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
    print("| task | system | seed | accuracy | without C | train reward by quarter | median s/step | C prompt-RMS / RMS (last step) |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in sorted(glob.glob(os.path.join(root, "*", "*", "seed-*"))):
        task, system, seed = cell.split(os.sep)[-3:]
        metrics_path = os.path.join(cell, "metrics.jsonl")
        if not os.path.exists(metrics_path):
            continue
        with open(metrics_path) as f:
            steps = [json.loads(line) for line in f if line.strip()]
        eval_path = os.path.join(cell, "eval.json")
        evaluation = json.load(open(eval_path)) if os.path.exists(eval_path) else {}
        rewards = [s["rollouts"]["reward_mean"] for s in steps]
        seconds = [s["step_seconds"] for s in steps]
        last = steps[-1]["diagnostics"] if steps else {}
        spread = (
            f"{last['context_prompt_rms'] / last['context_rms']:.3f}"
            if last.get("context_rms")
            else "–"
        )
        fmt = lambda v: "–" if v is None else f"{v:.3f}"
        print(
            f"| {task} | {system} | {seed[5:]} | {fmt(evaluation.get('accuracy'))} "
            f"| {fmt(evaluation.get('accuracy_without_context'))} "
            f"| {', '.join(f'{q:.3f}' for q in quarters(rewards))} "
            f"| {statistics.median(seconds):.1f} | {spread} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/paper/cpu-real")
