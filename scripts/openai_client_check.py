"""Drive `musketeers serve` with the real `openai` Python client (run by tests/suite/serve.rs when
MUSKETEERS_OPENAI_PYTHON names a Python with `openai` installed; .ci/run makes one).

Chat, completions, streaming of both, n > 1, stop strings, errors; the greedy chat answer must
equal the run's own greedy evaluation (eval.json) and the team's utilization sum to 1.
"""

import argparse
import json

import openai
from openai import OpenAI

parser = argparse.ArgumentParser()
parser.add_argument("--base-url", required=True)
parser.add_argument("--model", required=True)
parser.add_argument("--eval", required=True, help="the run's eval.json")
args = parser.parse_args()

client = OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=120)
checks = 0


def check(condition, message):
    global checks
    if not condition:
        raise SystemExit(f"FAILED: {message}")
    checks += 1


check([m.id for m in client.models.list().data] == [args.model], "models lists the model")

examples = json.load(open(args.eval))["examples"]
check(len(examples) > 0, "the run evaluated some problems")
for example in examples:
    reply = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": example["question"]}],
        temperature=0,
    )
    content = reply.choices[0].message.content
    check(
        content == example["completion"],
        f"greedy chat {content!r} == evaluation {example['completion']!r}",
    )
    team = reply.model_extra["musketeers"]
    check(team["system"] == "fused", "the fused system served")
    check(abs(sum(team["utilization"].values()) - 1.0) < 1e-4, "utilization sums to 1")
    usage = reply.usage
    check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, "usage adds up")

prompt = "w5 w6 w7"
text = client.completions.create(model=args.model, prompt=prompt, max_tokens=6, temperature=0)
text = text.choices[0].text
words = text.split()
check(len(words) > 0, "a completion has text")
stop = words[min(len(words), 3) - 1]
stopped = client.completions.create(
    model=args.model, prompt=prompt, max_tokens=6, temperature=0, stop=[stop]
)
check(stopped.choices[0].text == text[: text.find(stop)], "the text ends before the stop string")
check(stopped.choices[0].finish_reason == "stop", "finish_reason stop")

messages = [{"role": "user", "content": prompt}]
whole = client.chat.completions.create(
    model=args.model, messages=messages, max_tokens=6, temperature=0
)
pieces = []
for chunk in client.chat.completions.create(
    model=args.model, messages=messages, max_tokens=6, temperature=0, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
check("".join(pieces) == whole.choices[0].message.content, "streamed chat == whole chat")

streamed = "".join(
    chunk.choices[0].text
    for chunk in client.completions.create(
        model=args.model, prompt=prompt, max_tokens=6, temperature=0, stream=True
    )
    if chunk.choices
)
check(streamed == text, "streamed completion == whole completion")

many = client.chat.completions.create(
    model=args.model, messages=messages, n=3, temperature=1.0, seed=7, max_tokens=5
)
check(sorted(c.index for c in many.choices) == [0, 1, 2], "n=3 gives three choices")

try:
    client.chat.completions.create(model="not-served", messages=messages)
    check(False, "an unknown model is refused")
except openai.NotFoundError:
    checks += 1
try:
    client.chat.completions.create(model=args.model, messages=messages, max_tokens=-1)
    check(False, "a negative max_tokens is refused")
except openai.BadRequestError as error:
    check("max_tokens" in str(error), "the error names max_tokens")

print(f"openai client: {checks} checks passed")
