#!/usr/bin/env bash
# The GPU check, sized for a short slot (about 10 minutes) on a machine with a GPU and no network:
#   1. inference parity: every tiny fixture's per-token log-probs through `whetstone score` on
#      the device, against the transformers references in tests/fixtures (1e-4);
#   2. training parity: one step of each of the six methods on the tiny qwen3 fixture, on the
#      device and on the CPU (loss 1e-4 relative, gradient norm 1e-3 relative);
#   3. speed: `whetstone bench train` full and LoRA r16 (q, k, v, o) steps of a Qwen2.5-0.5B-shaped model in
#      f16 (batch 4 x 512), with tokens/s, achieved TFLOP/s and MFU, next to
#      bench/train_step_pytorch.py on CUDA in bf16 when PyTorch sees a GPU.
#
#   scripts/gpu-check.sh [--device wgpu|wgpu:N|cuda] [--no-bench] [--bin PATH]
#
# The binary: WHETSTONE or --bin (default target/release/whetstone). Build it beforehand; a
# stripped binary gzipped is about 40 MB, small enough to carry to a machine without cargo.
# MFU needs the device's peak: PEAK_TFLOPS, or read from nvidia-smi's name for known GPUs.
# CI runs parts 1 and 2 on Mesa's lavapipe (`--device wgpu --no-bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}"
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
exec python3 scripts/gpu_check.py "$@"
