"""TRL reference for `cargo xtask bench grpo`: GRPOTrainer steps on the bench's policy (a GGUF
file, which transformers dequantizes to f32, or a Hugging Face directory), f32 on the CPU,
eager attention, LoRA on the same projections as ours, with the step configuration of the
musketeers run it is compared with.

argv: model (.gguf or directory) prompts.jsonl steps threads [prompt_template max_completion_length]
Prints one JSON object per optimizer step: {"step", "seconds"}, the mean completion lengths,
and at the end {"peak_rss_bytes"}."""
import json
import re
import resource
import sys
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

model_path, prompts_path, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)

rows = [json.loads(line) for line in open(prompts_path)]
template = sys.argv[5] if len(sys.argv) > 5 else "{question}\nGive only the final answer, as <answer>...</answer>."
max_completion_length = int(sys.argv[6]) if len(sys.argv) > 6 else 64
dataset = Dataset.from_list([
    {"prompt": [{"role": "user", "content": template.format(question=r["question"])}], "answer": r["answer"]}
    for r in rows
])


def last_number_or_tag(completions, answer, **_):
    """1 when the <answer> tag, else the last number, equals the reference: the musketeers run's
    `tag-or-last-number` rule for integer answers."""
    rewards = []
    for completion, want in zip(completions, answer):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        tags = re.findall(r"<answer>(.*?)</answer>", text, re.S)
        found = tags[-1].strip() if tags else (re.findall(r"-?\d+", text) or [None])[-1]
        rewards.append(1.0 if found == want else 0.0)
    return rewards


class StepTimer(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        print(json.dumps({"step": state.global_step, "seconds": time.perf_counter() - self.start}), flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The work of a step depends on how long its completions were.
        if logs and "completions/mean_length" in logs:
            print(json.dumps({"mean_length": logs["completions/mean_length"]}), flush=True)


config = GRPOConfig(
    output_dir="/tmp/musketeers-bench-trl",
    per_device_train_batch_size=32,  # completions per step: 4 prompts x 8 generations
    gradient_accumulation_steps=1,
    num_generations=8,
    max_completion_length=max_completion_length,
    temperature=1.0,
    beta=0.04,
    learning_rate=1e-5,
    max_steps=steps,
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    bf16=False,
    fp16=False,
    seed=0,
    dataloader_num_workers=0,
    model_init_kwargs={"dtype": torch.float32, "attn_implementation": "eager"},
)
lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
if model_path.endswith(".gguf"):
    import os
    from transformers import AutoModelForCausalLM, AutoTokenizer
    where, gguf = os.path.dirname(model_path), os.path.basename(model_path)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf, dtype=torch.float32,
                                                 attn_implementation="eager")
    # transformers dequantized it to f32 already; what remains is a marker that makes Trainer
    # refuse to train "a quantized model".
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config.model_init_kwargs = None
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[last_number_or_tag], args=config,
                          train_dataset=dataset, peft_config=lora, callbacks=[StepTimer()])
else:
    trainer = GRPOTrainer(model=model_path, reward_funcs=[last_number_or_tag], args=config,
                          train_dataset=dataset, peft_config=lora, callbacks=[StepTimer()])
trainer.train()
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)
