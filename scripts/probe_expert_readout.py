"""How much of the answer an expert's hidden state carries, by where the expert is read.

The fused policy can only learn from C what the expert's readout state holds. This fits a
ridge probe from an expert's last-token hidden state to the answer of the real experiment's
task (sums of two numbers of one or two digits, `--tasks sums`) and reports its held-out exact
accuracy, for the text the expert reads now (the policy's rendered prompt) and for the same
text followed by a readout suffix (the expert's state where it would write the answer).

Usage (the torch venv of `cargo xtask bench lm`):
    target/bench-venv-lm/bin/python scripts/probe_expert_readout.py \
        ~/.cache/musketeers/models/smollm2-135m ~/.cache/musketeers/models/qwen2.5-coder-0.5b
"""
import os
import random
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SUFFIXES = ["", "<answer>"]
LAYERS = [-1, -4, -8]
PROBLEMS = 512
HELD_OUT = 128
TEMPLATE = "{question}\nGive only the final answer, as <answer>...</answer>."


def gguf(model_dir):
    (name,) = [f for f in os.listdir(model_dir) if f.endswith(".gguf")]
    return name


def problems(seed):
    rng = random.Random(seed)
    out = []
    for _ in range(PROBLEMS):
        a = rng.randint(0, 99) if rng.random() < 0.9 else rng.randint(0, 9)
        b = rng.randint(0, 99) if rng.random() < 0.9 else rng.randint(0, 9)
        op = rng.choice(["+", "-"])
        value = a + b if op == "+" else a - b
        out.append((f"State the final answer to the following arithmetic problem: {a} {op} {b} =", value))
    return out


def ridge_accuracy(x_train, y_train, x_test, y_test):
    """Exact accuracy of the rounded ridge prediction; the penalty picked on a train split."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xs, xt = (x_train - mean) / std, (x_test - mean) / std
    fit_n = len(xs) * 3 // 4

    def solve(x, y, lam):
        a = x.T @ x + lam * np.eye(x.shape[1])
        w = np.linalg.solve(a, x.T @ (y - y.mean()))
        return w, y.mean()

    best = None
    for lam in [1e-1, 1, 10, 100, 1000, 1e4]:
        w, b = solve(xs[:fit_n], y_train[:fit_n], lam)
        acc = np.mean(np.rint(xs[fit_n:] @ w + b) == y_train[fit_n:])
        if best is None or acc > best[0]:
            best = (acc, lam)
    w, b = solve(xs, y_train, best[1])
    return float(np.mean(np.rint(xt @ w + b) == y_test)), best[1]


def softmax_probe_accuracy(x_train, labels_train, x_test, labels_test, classes):
    """Held-out accuracy of a multinomial logistic probe (L2 penalty picked on a train split)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xs = torch.tensor((x_train - mean) / std, dtype=torch.float32)
    xt = torch.tensor((x_test - mean) / std, dtype=torch.float32)
    ys, yt = torch.tensor(labels_train), torch.tensor(labels_test)
    fit_n = len(xs) * 3 // 4

    def fit(x, y, penalty):
        torch.manual_seed(0)
        layer = torch.nn.Linear(x.shape[1], classes)
        opt = torch.optim.LBFGS(layer.parameters(), max_iter=200)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(layer(x), y) + penalty * layer.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return layer

    best = max(((float((fit(xs[:fit_n], ys[:fit_n], p)(xs[fit_n:]).argmax(1) == ys[fit_n:]).float().mean()), p)
                for p in [1e-4, 1e-3, 1e-2, 1e-1]))
    layer = fit(xs, ys, best[1])
    with torch.no_grad():
        return float((layer(xt).argmax(1) == yt).float().mean()), best[1]


def main():
    policy_dir, expert_dir = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    policy_tok = AutoTokenizer.from_pretrained(policy_dir, gguf_file=gguf(policy_dir))
    tok = AutoTokenizer.from_pretrained(expert_dir, gguf_file=gguf(expert_dir))
    model = AutoModelForCausalLM.from_pretrained(expert_dir, gguf_file=gguf(expert_dir), dtype=torch.float32)
    model.eval()
    data = problems(7)
    states = {(s, l): [] for s in SUFFIXES for l in LAYERS}
    next_digit_right = 0
    with torch.no_grad():
        for question, value in data:
            prompt = policy_tok.apply_chat_template(
                [{"role": "user", "content": TEMPLATE.format(question=question)}],
                tokenize=False, add_generation_prompt=True)
            base = tok(prompt, add_special_tokens=True)["input_ids"]
            full = tok(prompt + SUFFIXES[-1], add_special_tokens=True)["input_ids"]
            assert full[:len(base)] == base, "the suffix changed the prompt's tokens"
            out = model(torch.tensor([full]), output_hidden_states=True)
            for layer in LAYERS:
                h = out.hidden_states[layer][0]
                states[("", layer)].append(h[len(base) - 1].numpy())
                states[(SUFFIXES[-1], layer)].append(h[-1].numpy())
            first = tok.decode([int(out.logits[0, -1].argmax())]).strip()
            next_digit_right += first == str(value)[0]
    y = np.array([v for _, v in data], dtype=np.float64)
    n_train = PROBLEMS - HELD_OUT
    first_chars = sorted({str(v)[0] for _, v in data})
    first = np.array([first_chars.index(str(v)[0]) for _, v in data])
    majority = np.bincount(first[n_train:]).max() / HELD_OUT
    print(f"expert {os.path.basename(expert_dir)}, {PROBLEMS - HELD_OUT} probe problems, {HELD_OUT} held out")
    for (suffix, layer), rows in states.items():
        x = np.stack(rows).astype(np.float64)
        acc, lam = ridge_accuracy(x[:n_train], y[:n_train], x[n_train:], y[n_train:])
        spread = np.linalg.norm(x - x.mean(0), axis=1).mean() / np.linalg.norm(x, axis=1).mean()
        first_acc, penalty = softmax_probe_accuracy(x[:n_train], first[:n_train], x[n_train:], first[n_train:],
                                                    len(first_chars))
        print(f"suffix {suffix!r:12} layer {layer:3}: answer's first character, logistic probe {first_acc:.3f} "
              f"(penalty {penalty:g}); whole answer, ridge probe exact {acc:.3f} (penalty {lam:g}); "
              f"per-prompt spread / norm {spread:.3f}")
    print(f"majority first character on the held-out problems: {majority:.3f}")
    print(f"expert's own next token after {SUFFIXES[-1]!r} is the answer's first character: "
          f"{next_digit_right / PROBLEMS:.3f}")


if __name__ == "__main__":
    main()
