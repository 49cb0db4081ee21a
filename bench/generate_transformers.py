"""Side-by-side for `whetstone bench generate`: the same model file, prompt length, new-token
count and greedy decoding, run by transformers (PyTorch, CPU, float32).

  pip install torch transformers gguf accelerate
  python bench/generate_transformers.py ~/.cache/whetstone/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse, json, os, statistics, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FILLER = ("Clinical note: the patient is a 54-year-old with a history of hypertension and type 2 "
          "diabetes who presents with three days of productive cough, fever and shortness of breath on exertion. ")

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("--prompt-tokens", type=int, default=64)
ap.add_argument("--new-tokens", type=int, default=128)
ap.add_argument("--runs", type=int, default=3)
a = ap.parse_args()
torch.set_num_threads(os.cpu_count())
d, f = os.path.dirname(a.gguf), os.path.basename(a.gguf)
t0 = time.perf_counter()
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
load = time.perf_counter() - t0
ids = []
while len(ids) < a.prompt_tokens:
    ids += tok(FILLER, add_special_tokens=False).input_ids
ids = torch.tensor([ids[: a.prompt_tokens]])
rows = []
with torch.inference_mode():
    for run in range(a.runs + 1):
        t = time.perf_counter()
        out = model(ids, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        prefill = time.perf_counter() - t
        td = time.perf_counter()
        for _ in range(a.new_tokens - 1):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        decode = time.perf_counter() - td
        total = time.perf_counter() - t
        if run:
            rows.append((prefill, (a.new_tokens - 1) / decode, a.new_tokens / total, total))
med = lambda i: statistics.median(r[i] for r in rows)
print(json.dumps({"bench": "generate", "impl": f"transformers {__import__('transformers').__version__} / torch {torch.__version__}",
                  "threads": torch.get_num_threads(), "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                  "runs": a.runs, "load_seconds": load, "prefill_seconds": med(0), "decode_tokens_per_second": med(1),
                  "end_to_end_tokens_per_second": med(2), "total_seconds": med(3)}))
