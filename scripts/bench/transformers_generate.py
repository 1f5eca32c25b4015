"""transformers reference for `cargo xtask bench lm`: a SmolLM2-135M-shaped LlamaForCausalLM with
random weights (or the model given as a 5th argument: a .gguf file, dequantized, or a directory),
f32, eager attention, sampling new tokens at the given batch sizes.
Prints one JSON object per batch: prefill and decode tokens per second."""
import os
import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

batches = [int(b) for b in sys.argv[1].split(",")]
new_tokens = int(sys.argv[2])
threads = int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5,
                     tie_word_embeddings=True, attn_implementation="eager")
model_path = sys.argv[4] if len(sys.argv) > 4 else ""
if not model_path:
    model = LlamaForCausalLM(config).eval()
elif model_path.endswith(".gguf"):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(model_path), gguf_file=os.path.basename(model_path),
                                                 dtype=torch.float32, attn_implementation="eager").eval()
else:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="eager").eval()
prompt_len = 32
for batch in batches:
    ids = torch.tensor([[(b * 131 + i * 17) % 49000 for i in range(prompt_len)] for b in range(batch)])
    with torch.no_grad():
        model(ids)  # warm-up
        start = time.perf_counter()
        model(ids)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=1.0,
                       top_k=0, top_p=1.0, pad_token_id=0)
        total = time.perf_counter() - start
    decode = max(total - prefill, 1e-9)
    print(json.dumps({"batch": batch, "prefill_tokens_per_sec": batch * prompt_len / prefill,
                      "decode_tokens_per_sec": batch * new_tokens / decode}), flush=True)
import resource
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)
