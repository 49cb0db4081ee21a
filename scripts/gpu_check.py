"""The body of scripts/gpu-check.sh (read its header). Standard library only, so it runs on any
machine with Python 3; PyTorch is used only for the side-by-side bench, and only when present."""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser(description="GPU check: inference and training parity, then speed")
ap.add_argument("--device", default="wgpu")
ap.add_argument("--no-bench", action="store_true", help="parts 1 and 2 only")
ap.add_argument("--bin", default=os.environ.get("WHETSTONE", "target/release/whetstone"))
ap.add_argument("--bench-shape", default="qwen2.5-0.5b", help="the shape part 3 trains (qwen2.5-0.5b, qwen2.5-1.5b)")
ap.add_argument("--bench-batch", default="4")
ap.add_argument("--bench-seq", default="512")
ap.add_argument("--bench-precision", default="f16")
a = ap.parse_args()
BIN = os.path.abspath(a.bin)
if not os.access(BIN, os.X_OK):
    sys.exit(f"gpu-check: {BIN} is not an executable: build it (cargo build --release) or pass --bin")
ROOT = os.getcwd()
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tiny-models")
MODELS = ["llama", "llama3-tied-ropescaled", "qwen2", "qwen3", "gpt2"]
failures = []
t_start = time.time()


def whetstone(*args):
    r = subprocess.run([BIN, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"whetstone {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r.stdout


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


# 1. Inference parity against transformers.
print(f"== inference parity on {a.device}: per-token log-probs vs transformers (1e-4)", flush=True)
for m in MODELS:
    d = os.path.join(FIXTURES, m)
    ref = json.load(open(os.path.join(d, "reference.json")))
    worst = 0.0
    for i, p in enumerate(ref["prompts"]):
        out = json.loads(whetstone("score", "--json", "--device", a.device, "--text", p["text"], d))
        if out["ids"] != p["ids"]:
            check(False, f"{m} prompt {i}: token ids differ from transformers'")
            continue
        want, got = p["token_logprobs"], out["token_logprobs"]
        got = got[len(got) - len(want):]
        worst = max([worst] + [abs(x - y) for x, y in zip(got, want)])
    check(worst < 1e-4, f"{m}: log-probs at most {worst:.2e} from transformers")

# 2. Training parity: one step of each method on the device and on the CPU.
print(f"== training parity: one step of each method on {a.device} vs cpu", flush=True)
QA = [("Chest pain at rest?", "Emergency: call an ambulance."), ("Mild cough for two days?", "Routine: rest and fluids."),
      ("Stiff neck and fever?", "Urgent: see a doctor today."), ("Small cut on a finger?", "Routine: clean and cover it.")]
work = tempfile.mkdtemp(prefix="gpu-check-")
with open(os.path.join(work, "sft.jsonl"), "w") as f:
    f.write("\n".join(json.dumps({"question": q, "answer": r}) for q, r in QA))
with open(os.path.join(work, "prefs.jsonl"), "w") as f:
    f.write("\n".join(json.dumps({"prompt": q, "chosen": r, "rejected": "No idea, search online."}) for q, r in QA))
with open(os.path.join(work, "prompts.jsonl"), "w") as f:
    f.write("\n".join(json.dumps({"prompt": q, "reference": r}) for q, r in QA))
SECTIONS = {
    "sft": ("sft.jsonl", ""),
    "reward": ("prefs.jsonl", ""),
    "dpo": ("prefs.jsonl", ""),
    "ppo": ("prompts.jsonl", '[ppo]\nmax_new_tokens = 4\nactor_lr = 1e-3\ncritic_lr = 1e-3\n[[ppo.rules]]\nrule = "contains"\ntext = "Routine"\n'),
    "grpo": ("prompts.jsonl", '[grpo]\ngroup_size = 4\nmax_new_tokens = 4\ntemperature = 1.0\n[[grpo.rules]]\nrule = "regex"\npattern = "[A-Z]"\n'),
    "distill": ("sft.jsonl", f'[distill]\nteacher = {json.dumps(os.path.join(FIXTURES, "llama"))}\ntemperature = 2.0\nsft_weight = 0.25\n'),
}


def first_step(method, device, role):
    data, section = SECTIONS[method]
    name = f"{method}-{role}"
    job = os.path.join(work, name + ".toml")
    with open(job, "w") as f:
        f.write(f'method = "{method}"\nmodel = {json.dumps(os.path.join(FIXTURES, "qwen3"))}\nname = "{name}"\nseed = 7\n'
                f'output = "runs"\ndevice = "{device}"\n[dataset]\npath = "{data}"\n[train]\nlr = 1e-2\n'
                f'decay = "constant"\nmax_seq_len = 64\nmax_steps = 1\nbatch_size = 4\n{section}')
    whetstone("train", "--json", job)
    with open(os.path.join(work, "runs", name, "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "loss" in r and "grad_norm" in r]
    if not steps:
        raise RuntimeError(f"{name}: no step in metrics.jsonl")
    return steps[0]


for method in SECTIONS:
    c, g = first_step(method, "cpu", "cpu"), first_step(method, a.device, "device")
    rel = lambda x, y: abs(x - y) / max(abs(x), abs(y), 1e-12)
    check(rel(c["loss"], g["loss"]) < 1e-4 and rel(c["grad_norm"], g["grad_norm"]) < 1e-3,
          f"{method}: loss {g['loss']:.7g} vs cpu {c['loss']:.7g}, grad norm {g['grad_norm']:.7g} vs {c['grad_norm']:.7g}")
shutil.rmtree(work, ignore_errors=True)

# 3. Speed, side by side with PyTorch.
if not a.no_bench:
    print(f"== speed: {a.bench_shape} shape, batch {a.bench_batch} x {a.bench_seq}, {a.bench_precision} on {a.device}", flush=True)
    # Dense peak TFLOP/s in f16/bf16 with f32 accumulation, from the vendors' data sheets.
    PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0, "A10": 125.0}
    peak = float(os.environ["PEAK_TFLOPS"]) if os.environ.get("PEAK_TFLOPS") else None
    if peak is None and shutil.which("nvidia-smi"):
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout
        print("gpu: " + name.strip())
        peak = next((v for k, v in PEAKS.items() if k in name), None)
    for mode, extra in [("full", []), ("lora", ["--lora-rank", "16"])]:
        try:
            r = json.loads(whetstone("bench", "train", "--json", "--shape", a.bench_shape, "--device", a.device,
                                     "--precision", a.bench_precision, "--batch", a.bench_batch, "--seq", a.bench_seq, "--steps", "3", *extra))
        except RuntimeError as e:
            check(False, f"bench {mode}: {e}")
            continue
        tf = r["gflops"] / 1e3
        mfu = f"{100 * tf / peak:.1f} %" if peak else "unknown (set PEAK_TFLOPS)"
        print(f"whetstone {mode}: {r['tokens_per_second']:.0f} tokens/s, {r['step_seconds']:.3f} s/step, {tf:.3g} TFLOP/s, MFU {mfu}")
    try:
        import torch
        if torch.cuda.is_available():
            for mode, extra in [("full", []), ("lora", ["--lora-rank", "16"])]:
                out = subprocess.run([sys.executable, "bench/train_step_pytorch.py", "--shape", a.bench_shape, "--device", "cuda",
                                      "--autocast", "bf16", "--batch", a.bench_batch, "--seq", a.bench_seq, "--steps", "3", *extra],
                                     capture_output=True, text=True)
                line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()[-500:]
                print(f"pytorch {mode}: {line}")
        else:
            print("pytorch: no CUDA device visible; the PyTorch side is skipped")
    except ImportError:
        print("pytorch: not installed; the PyTorch side is skipped")

print(f"== {len(failures)} failed, {time.time() - t_start:.0f} s")
sys.exit(1 if failures else 0)
