#!/usr/bin/env python3
"""A reward program for musketeers: the answer-format reward (a task our verifiers do not
have). It speaks the JSON-lines reward protocol: one request per line on stdin,
{"batch": [{"prompt", "completion", "question", "answer", "task", "metadata"}, ...]},
one answer per line on stdout, {"rewards": [one number per completion]}.

Reward: 1.0 for a completion with exactly one <answer>...</answer> whose content is short
(at most 12 words), 0.5 for one answer tag with a longer content, 0.0 otherwise. Only the
standard library: any Python 3 runs it.

Use it in a run config:

    [[rewards]]
    name = "answer_format"
    command = ["python3", "examples/rewards/answer_format.py"]
    weight = 1.0
"""

import json
import re
import sys

TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def reward(completion: str) -> float:
    answers = TAG.findall(completion)
    if len(answers) != 1:
        return 0.0
    return 1.0 if len(answers[0].split()) <= 12 else 0.5


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        batch = json.loads(line)["batch"]
        rewards = [reward(item["completion"]) for item in batch]
        sys.stdout.write(json.dumps({"rewards": rewards}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
