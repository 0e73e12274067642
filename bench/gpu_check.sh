#!/usr/bin/env bash
# The GPU check: on a fresh machine with one NVIDIA GPU, in about 8 minutes, install, build the
# 0.6B and 1.7B benchmark models (random weights, the published configurations), run the
# equivalence and batching tests on cuda:0, and print time to first audio, real-time factor
# and throughput at 1/8/16/32/64 concurrent requests (0.6B; 1.7B at 1/16/32/64) for the package,
# our server (compiled step with CUDA graphs, what QWEN_TTS_COMPILE=auto gives on CUDA, and
# eager; batches sized by QWEN_TTS_MAX_BATCH=auto, streams' chunks decoded together as
# QWEN_TTS_DECODE_TOGETHER=auto does on a GPU), and faster-qwen3-tts side by side. Each
# concurrency level prints its line as it ends. Nothing here runs in CI.
#
#   bash bench/gpu_check.sh [frames]      (from the repository root)
#
# Installing: with GPU_SITE=archive (made by bench/gpu_site.sh where PyPI answers), nothing is
# fetched: the machine's python3 must already hold PyTorch with CUDA (and transformers 5 for
# faster-qwen3-tts), as CUDA images do, and the archive brings the rest. Without it, uv installs
# from PyPI (the project's lock), and faster-qwen3-tts gets a venv of its own.
#
# Each section runs under a time limit, in order of what matters most, inside GPU_CHECK_BUDGET
# seconds (default 480): one that fails or runs out is reported and the next one starts.
# GPU_CHECK_SERIAL=0 leaves out the package's serial baseline from the concurrency runs (on a
# GPU it takes longer than our server's whole run: about 12-14 s a request at 100 frames);
# GPU_CHECK_EAGER=1 adds an eager server (QWEN_TTS_COMPILE=off) to the one-stream comparison;
# GPU_CHECK_NOTHREAD=1 a server decoding on its scheduler thread (QWEN_TTS_DECODE_THREAD=off)
# to the 0.6B concurrency runs;
# GPU_CHECK_TORCH_LOGS sets the servers' TORCH_LOGS (default: why CUDA graphs were skipped,
# what recompiled). On an H200 with GPU_CHECK_SERIAL=0 every section finished in 526 s
# (GPU_CHECK_BUDGET=550): the tests, with both models' first compile beside them, took 240 s.
# Results: a summary on stdout and every section's whole output in $OUT (or /tmp/gpu-check)/
# gpu-check.log, the servers' logs in servers.log, their compiled graphs in compile-cache.tar.xz.
set -uo pipefail
FRAMES="${1:-100}"
BUDGET="${GPU_CHECK_BUDGET:-480}"
RESULTS="${OUT:-/tmp/gpu-check}"
MODELS=/tmp/gpu-models
DEVICE="${GPU_CHECK_DEVICE:-cuda:0}"  # cpu: a dry run of the script itself, on a machine without a GPU
LOG="$RESULTS/gpu-check.log"
mkdir -p "$RESULTS" "$MODELS"
export PYTHONUNBUFFERED=1 BENCH_SERVER_LOG="$RESULTS/servers.log"
# Why inductor would skip CUDA graphs, and what made it compile again, in the servers' logs.
export TORCH_LOGS="${GPU_CHECK_TORCH_LOGS:-perf_hints,recompiles}"
# The servers' compiled graphs: a cold start compiles for about 90-110 s on an H200, one that
# finds them about 15 s. GPU_COMPILE_CACHE=archive (the compile-cache.tar.xz an earlier run
# left in its results, from the same GPU model and image) starts warm.
export QWEN_TTS_DATA_DIR=/tmp/gpu-data
mkdir -p "$QWEN_TTS_DATA_DIR"
[ -z "${GPU_COMPILE_CACHE:-}" ] || tar xJf "$GPU_COMPILE_CACHE" -C "$QWEN_TTS_DATA_DIR" || echo "no compile cache"
log() { printf '\n== %s (%ss)\n' "$*" "$SECONDS" | tee -a "$LOG"; }

# section NAME SECONDS LINES COMMAND...: COMMAND under a limit (SECONDS, or what is left of the
# budget), its output appended to the log, its last LINES lines shown.
section() {
  local name=$1 limit=$2 lines=$3
  shift 3
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 30 ]; then
    log "$name: skipped, the budget is spent"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name (limit ${limit}s)"
  local part="$RESULTS/part.txt"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$part" 2>&1
  local rc=$?
  cat "$part" >>"$LOG"
  tail -n "$lines" "$part"
  rm -f "$part"
  # servers a timed-out benchmark left behind (KEEP_SERVERS=1: not while models precompile)
  [ -n "${KEEP_SERVERS:-}" ] || pkill -f "qwen_tts_api.cli serve" 2>/dev/null
  [ "$rc" -eq 0 ] || log "$name: exit status $rc (124: out of time)"
}

log "install"
if [ -n "${GPU_SITE:-}" ]; then
  SITE=/tmp/gpu-site
  mkdir -p "$SITE" && tar xJf "$GPU_SITE" -C "$SITE" || exit 1
  PY=(python3)
  export PYTHONPATH="$PWD/src:$SITE/ours:$SITE/audio"
  FQ=(env PYTHONPATH="$SITE/fq:$SITE/audio" python3)
else
  export PATH="$HOME/.local/bin:$PATH"
  command -v uv >/dev/null || python3 -m pip install -q uv
  uv sync -q || exit 1
  PY=(uv run --no-sync python)
  FQ=(/tmp/fq/bin/python)
  (uv venv -q /tmp/fq --python 3.11 && VIRTUAL_ENV=/tmp/fq uv pip install -q faster-qwen3-tts) >"$RESULTS/fq-install.txt" 2>&1 &
  FQ_INSTALL=$!
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$LOG"
"${PY[@]}" -c "import torch, transformers, qwen_tts, qwen_tts_api.app; print('ours: torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0), 'transformers', transformers.__version__)" 2>&1 | tail -3 | tee -a "$LOG"
[ -n "${FQ_INSTALL:-}" ] || "${FQ[@]}" -c "import faster_qwen3_tts, transformers; print('faster-qwen3-tts: transformers', transformers.__version__)" 2>&1 | tail -3 | tee -a "$LOG"
nproc | sed 's/^/cpu cores: /' | tee -a "$LOG"

# The benchmark models, built side by side on the CPU while the tests use the GPU; then each
# model's server starts once on its own, so that its graphs are compiled (into the compile
# cache) while the tests run: the measured servers find them there (about 15 s, not 100).
build_model() {
  "${PY[@]}" -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; from latency import build; build('$1', $FRAMES, Path('$MODELS'))" \
    && touch "$MODELS/$1.done"
}
precompile() {
  "${PY[@]}" -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; from latency import server_process
with server_process(Path('$MODELS/$1-customvoice'), '$DEVICE', 'bfloat16', 'sdpa'): pass" \
    && echo "$1: compiled in ${SECONDS}s of the check"
}
PRECOMPILE=()
for size in 0.6b 1.7b; do
  ( (build_model "$size" && precompile "$size") >>"$RESULTS/build.txt" 2>&1 ) &
  PRECOMPILE+=($!)
done
await() {  # PID...: wait for them while the budget lasts (what is left goes on regardless)
  local pid
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && [ $((BUDGET - SECONDS)) -gt 240 ]; do sleep 1; done
  done
}
await_model() {
  while [ ! -e "$MODELS/$1.done" ] && [ $((BUDGET - SECONDS)) -gt 30 ] && pgrep -f "latency import build" >/dev/null; do sleep 1; done
  [ -e "$MODELS/$1.done" ] || { cat "$RESULTS/build.txt"; return 1; }
}

# The tests whose paths have not yet run on a GPU come first: CUDA graphs and the compiled
# step, the channels-last codec's streamed waveform, a shared reference context.
FIRST="batched_codes_equal_solo or does_not_recompile or streamed_waveform or shared_unchanged or keeps_only_its_left or different_positions"
TESTS="tests/engine/generation/test_generation_equivalence.py tests/engine/generation/test_batching.py tests/engine/generation/test_decode_together.py"
KEEP_SERVERS=1 section "tests on $DEVICE: equivalence, batching (eager, compiled, CUDA graphs), decoding together" 210 12 \
  bash -c "QWEN_TTS_TEST_DEVICE=$DEVICE ${PY[*]} -m pytest -q -rfE -p no:cacheprovider --maxfail=3 --no-header -k '$FIRST' \
    $TESTS; [ \$? -ne 2 ] || exit 2; \
    QWEN_TTS_TEST_DEVICE=$DEVICE ${PY[*]} -m pytest -q -rfE -p no:cacheprovider --maxfail=3 --no-header -k 'not ($FIRST)' \
    $TESTS"

grep -aE "^(FAILED|ERROR) |[0-9]+ (passed|failed)|no tests ran|Interrupted" "$LOG" | tail -12
log "waiting for the models and their first compile"
await "${PRECOMPILE[@]}"
cat "$RESULTS/build.txt" | grep -E "built|compiled|Error|error" | tail -6
await_model 0.6b
section "0.6b: our server (CUDA graphs) at 1/8/16/32/64 concurrent, $FRAMES frames, bfloat16" 150 12 \
  "${PY[@]}" bench/concurrency.py --model 0.6b --device "$DEVICE" --dtype bfloat16 --frames "$FRAMES" \
  --concurrency 1 8 16 32 64 --max-batch auto --serial-requests "${GPU_CHECK_SERIAL:-1}" --server bfloat16 \
  ${GPU_CHECK_NOTHREAD:+--server bfloat16+nothread} --model-dir "$MODELS"

[ -z "${FQ_INSTALL:-}" ] || wait "$FQ_INSTALL" || cat "$RESULTS/fq-install.txt"
section "0.6b faster-qwen3-tts, same model" 60 2 \
  "${FQ[@]}" bench/faster_qwen3.py --model-dir "$MODELS/0.6b-customvoice" --frames "$FRAMES" --runs 2

# The in-process engine runs eagerly (QWEN_TTS_COMPILE is a server setting): slow on a GPU.
section "0.6b one stream: package vs our server (CUDA graphs${GPU_CHECK_EAGER:+, then eager})" 120 8 \
  "${PY[@]}" bench/latency.py --model 0.6b --device "$DEVICE" --dtype bfloat16 --frames "$FRAMES" --runs 1 \
  --no-engine --server bfloat16 ${GPU_CHECK_EAGER:+--server bfloat16+eager} --model-dir "$MODELS"

section "word timings: the 0.6B forced aligner per second of audio, bfloat16" 60 6 \
  "${PY[@]}" bench/aligner.py --model-dir "$MODELS" --device "$DEVICE" --dtype bfloat16

await_model 1.7b
section "1.7b: our server (CUDA graphs) at 1/16/32/64 concurrent" 120 10 \
  "${PY[@]}" bench/concurrency.py --model 1.7b --device "$DEVICE" --dtype bfloat16 --frames "$FRAMES" \
  --concurrency 1 16 32 64 --max-batch auto --serial-requests "${GPU_CHECK_SERIAL:-1}" --server bfloat16 \
  --model-dir "$MODELS"

section "1.7b faster-qwen3-tts, same model" 50 2 \
  "${FQ[@]}" bench/faster_qwen3.py --model-dir "$MODELS/1.7b-customvoice" --frames "$FRAMES" --runs 1
log "what the servers said about compiling, CUDA graphs and failures"
grep -v "qwen_tts_api.requests\|^INFO:" "$BENCH_SERVER_LOG" 2>/dev/null | grep -iE "compil|graph|warm|error|fail|ready|Traceback|skipping|record" | sed "s/^[0-9-]* [0-9:,]* //" | sort | uniq -c | sort -rn | head -20
[ -d "$QWEN_TTS_DATA_DIR/compile-cache" ] && tar cf - -C "$QWEN_TTS_DATA_DIR" compile-cache | xz -T0 -6 >"$RESULTS/compile-cache.tar.xz"
log "done"
