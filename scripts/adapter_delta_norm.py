#!/usr/bin/env python3
"""How far each run's LoRA adapters moved: the Frobenius norm of every adapter's update
B @ A, summed over the model (and of the B matrices alone), read from the PEFT files of a
run's last checkpoint. Needs numpy and safetensors (the bench's virtual environment has both).

    target/bench-venv-lm/bin/python scripts/adapter_delta_norm.py runs/paper/cpu-real-read-40/sums/*/seed-*
"""
import sys

import numpy as np
from safetensors.numpy import load_file


def delta_norms(run_dir):
    tensors = load_file(f"{run_dir}/checkpoint/adapter/adapter_model.safetensors")
    squared_delta = squared_b = 0.0
    for name, b in tensors.items():
        if "lora_B" not in name:
            continue
        b = b.astype(np.float64)
        a = tensors[name.replace("lora_B", "lora_A")].astype(np.float64)
        squared_delta += float(((b @ a) ** 2).sum())
        squared_b += float((b**2).sum())
    return squared_delta**0.5, squared_b**0.5


def main(run_dirs):
    if not run_dirs:
        sys.exit(__doc__)
    for run_dir in run_dirs:
        delta, b = delta_norms(run_dir)
        print(f"{run_dir}: |B A| {delta:.4f}  |B| {b:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
