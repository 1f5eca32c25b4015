"""Scores per second of reasoning-gym's own score_answer on the parity fixture, per dataset.

Used by `cargo xtask bench verify` as the reference measured in the same run.
"""
import json
import sys
import time

import reasoning_gym

seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
cases = {}
for line in open(sys.argv[1]):
    record = json.loads(line)
    if "dataset" not in record:
        continue
    cases.setdefault(record["dataset"], []).extend((record["entry"], c[0]) for c in record["cases"])

for dataset, items in sorted(cases.items()):
    scorer = reasoning_gym.create_dataset(dataset, size=1, seed=0)
    scored, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for entry, answer in items:
            try:
                scorer.score_answer(answer, entry)
            except Exception:
                pass
        scored += len(items)
    print(json.dumps({"dataset": dataset, "scores_per_sec": scored / (time.perf_counter() - start)}), flush=True)
