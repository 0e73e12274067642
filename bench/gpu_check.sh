#!/usr/bin/env bash
# The GPU check: on a fresh machine with one NVIDIA GPU, in about 8 minutes, install, build the
# 0.6B and 1.7B benchmark models (random weights, the published configurations), run the
# equivalence and batching tests on cuda:0, and print time to first audio, real-time factor
# and throughput at 1/8/16 concurrent requests for the package, our server (compiled step with
# CUDA graphs, what QWEN_TTS_COMPILE=auto gives on CUDA, and eager), and faster-qwen3-tts (in
# its own venv) side by side. Nothing here runs in CI.
#
#   bash bench/gpu_check.sh [frames]      (from the repository root; results in $OUT or /tmp/gpu-check)
set -euo pipefail
FRAMES="${1:-100}"
RESULTS="${OUT:-/tmp/gpu-check}"
MODELS=/tmp/gpu-models
mkdir -p "$RESULTS" "$MODELS"
export PATH="$HOME/.local/bin:$PATH"
log() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

log "install"
command -v uv >/dev/null || python3 -m pip install -q uv
uv sync -q
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
uv run python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

log "equivalence and batching tests on cuda:0"
QWEN_TTS_TEST_DEVICE=cuda:0 uv run pytest -q -p no:cacheprovider \
  tests/test_generation_equivalence.py tests/test_batching.py 2>&1 | tail -15 | tee "$RESULTS/tests.txt" || true

log "faster-qwen3-tts in its own venv (in the background)"
(uv venv -q /tmp/fq --python 3.11 && VIRTUAL_ENV=/tmp/fq uv pip install -q faster-qwen3-tts) > "$RESULTS/fq-install.txt" 2>&1 &
FQ_INSTALL=$!

for size in 0.6b 1.7b; do
  log "$size: package vs our server (CUDA graphs, then eager), one stream ($FRAMES frames, bfloat16)"
  uv run python bench/latency.py --model "$size" --device cuda:0 --dtype bfloat16 --frames "$FRAMES" --runs 3 \
    --server bfloat16 --server bfloat16+eager --model-dir "$MODELS" 2>&1 | tail -14 | tee "$RESULTS/latency-$size.txt"
done

log "0.6b: throughput and TTFA at 1/8/16 concurrent (CUDA graphs, then eager)"
uv run python bench/concurrency.py --model 0.6b --device cuda:0 --dtype bfloat16 --frames "$FRAMES" \
  --concurrency 1 8 16 --server bfloat16 --server bfloat16+eager --model-dir "$MODELS" 2>&1 | tail -15 \
  | tee "$RESULTS/concurrency-0.6b.txt"

log "faster-qwen3-tts, same models"
wait "$FQ_INSTALL" || { echo "faster-qwen3-tts did not install (see fq-install.txt)"; exit 0; }
for size in 0.6b 1.7b; do
  /tmp/fq/bin/python bench/faster_qwen3.py --model-dir "$MODELS/$size-customvoice" --frames "$FRAMES" \
    2>&1 | tail -3 | tee "$RESULTS/faster-qwen3-$size.txt" || true
done
log "done"
