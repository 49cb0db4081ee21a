"""Side-by-side for `whetstone bench train`: one SFT training step (forward, backward, global-norm
clip, AdamW) of SmolLM2-135M-shaped weights on random tokens, batch 4 x 256, CPU: float32, or
with `--autocast bf16` the forward pass (and so the backward) under
`torch.autocast("cpu", dtype=torch.bfloat16)` over float32 master weights, PyTorch's mixed precision.

  pip install torch transformers gguf accelerate peft
  python bench/train_step_pytorch.py ~/.cache/whetstone/models/SmolLM2-135M-Instruct.Q4_1.gguf [--lora-rank 8] [--autocast bf16]

`--shape qwen2.5-0.5b` builds random weights in that architecture's shape instead of reading a
file (as `whetstone bench train --shape` does), and `--device cuda` runs on the GPU (autocast on
"cuda" then), so `scripts/gpu-check.sh` can put both sides of a GPU step in one run.
"""
import argparse, contextlib, json, os, statistics, time
import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("gguf", nargs="?")
ap.add_argument("--shape", choices=["qwen2.5-0.5b", "qwen2.5-1.5b"], help="random weights of this shape instead of a file")
ap.add_argument("--device", default="cpu", help="cpu or cuda")
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--lora-rank", type=int)
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--autocast", choices=["bf16"], help="mixed precision: the forward pass under torch.autocast")
a = ap.parse_args()
torch.set_num_threads(os.cpu_count())
torch.manual_seed(0)
# The shapes as `whetstone bench train --shape` states them (engine/src/model/synthetic.rs).
SHAPES = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True),
}
if a.shape:
    from transformers import Qwen2Config
    model = AutoModelForCausalLM.from_config(Qwen2Config(**SHAPES[a.shape]), dtype=torch.float32)
elif a.gguf:
    d, f = os.path.dirname(a.gguf), os.path.basename(a.gguf)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
else:
    ap.error("give a .gguf file or --shape")
dev = torch.device(a.device)
model = model.to(dev)
if a.lora_rank:
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq + 1), device=dev)
times = []
for i in range(a.steps + 1):
    t = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16) if a.autocast else contextlib.nullcontext():
        logits = model(input_ids=ids[:, :-1]).logits
        # Inside the context, so autocast runs the loss in float32 as its recipe does.
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    if i:
        times.append(time.perf_counter() - t)
step = statistics.median(times)
print(json.dumps({"bench": "train", "impl": f"torch {torch.__version__}", "device": a.device,
                  "model": a.shape or a.gguf, "mode": "lora" if a.lora_rank else "full",
                  "precision": "autocast-bf16" if a.autocast else "f32",
                  "threads": torch.get_num_threads(), "batch": a.batch, "seq": a.seq,
                  "trainable_parameters": sum(p.numel() for p in params), "steps": a.steps,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "step_seconds": step, "tokens_per_second": a.batch * a.seq / step}))
