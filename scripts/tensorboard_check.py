#!/usr/bin/env python3
"""Read a run directory's TensorBoard event files with the `tensorboard` package's own reader
and check that every scalar and its step equal `metrics.jsonl`. Used by CI
(tests/suite/tensorboard.rs, with MUSKETEERS_TENSORBOARD_PYTHON pointing at a venv's python).

    python scripts/tensorboard_check.py RUN_DIR
"""

import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def flatten(prefix, value, experts, out):
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            out[prefix] = float(value)
    elif isinstance(value, dict):
        for key, v in value.items():
            if not prefix and key == "step":
                continue
            flatten(f"{prefix}/{key}" if prefix else key, v, experts, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            name = experts[i] if prefix == "utilization" and i < len(experts) else str(i)
            flatten(f"{prefix}/{name}", v, experts, out)


def main(run_dir):
    experts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else []
    expected = {}
    with open(f"{run_dir}/metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            scalars = {}
            flatten("", row, experts, scalars)
            for tag, v in scalars.items():
                expected.setdefault(tag, []).append((row["step"], v))
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    missing = set(expected) - tags
    extra = tags - set(expected)
    assert not missing and not extra, f"missing {sorted(missing)}, extra {sorted(extra)}"
    checked = 0
    for tag, want in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], f"{tag}: steps {got} vs {want}"
        for (_, a), (_, b) in zip(got, want):
            assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), f"{tag}: {a} vs {b}"
            checked += 1
    print(f"tensorboard: {len(expected)} tags, {checked} scalars equal metrics.jsonl")


if __name__ == "__main__":
    main(sys.argv[1])
