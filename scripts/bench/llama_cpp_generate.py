"""llama.cpp reference for `cargo xtask bench lm --model M.gguf --llama-cpp`: batch-1 prefill
and decode tokens per second through llama-cpp-python, at the weight precision our side runs.

Arguments: the GGUF file, the weight precision (f32 or f16), new tokens, threads, and a
directory for the converted file. The fetched GGUFs are 4-bit (Q4_K_M), which our side
dequantizes; llama.cpp would run them 4-bit, streaming a quarter of the bytes. So the file is
first rewritten with every weight in f32 or f16 (llama.cpp's own quantizer with
`allow_requantize`: dequantize, then store), kept between runs. The prompt is the one
`cargo xtask bench lm` gives our side (32 tokens, ids `i * 17`), sampled at temperature 1.
Prints one JSON object: prefill and decode tokens per second, and the peak resident memory."""
import json
import os
import resource
import sys
import time

import llama_cpp

gguf, weights, new_tokens, threads, out_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ftype = {"f32": llama_cpp.LLAMA_FTYPE_ALL_F32, "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}[weights]
os.makedirs(out_dir, exist_ok=True)
converted = os.path.join(out_dir, os.path.basename(gguf).removesuffix(".gguf") + f"-{weights}.gguf")
if not os.path.exists(converted):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads
    partial = converted + ".partial"
    if llama_cpp.llama_model_quantize(gguf.encode(), partial.encode(), params) != 0:
        sys.exit(f"llama.cpp could not rewrite {gguf} with {weights} weights")
    os.replace(partial, converted)

prompt_len = 32
llm = llama_cpp.Llama(model_path=converted, n_ctx=prompt_len + new_tokens + 8, n_threads=threads,
                      n_threads_batch=threads, n_batch=prompt_len, seed=0, verbose=False)
prompt = [(i * 17) % 49000 for i in range(prompt_len)]


def timed_run():
    """Seconds to the first sampled token (prefill) and for the rest (decode)."""
    llm.reset()
    start = time.perf_counter()
    first = None
    produced = 0
    for _ in llm.generate(prompt, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, reset=True):
        produced += 1
        if first is None:
            first = time.perf_counter()
        if produced == new_tokens:
            break
    end = time.perf_counter()
    return first - start, end - first, produced


timed_run()  # warm-up
prefill, decode, produced = timed_run()
print(json.dumps({
    "batch": 1,
    "weights": weights,
    "prefill_tokens_per_sec": prompt_len / prefill,
    "decode_tokens_per_sec": (produced - 1) / max(decode, 1e-9),
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
}), flush=True)
