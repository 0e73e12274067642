#!/usr/bin/env bash
# For a GPU machine that cannot reach PyPI but whose python3 already holds PyTorch with CUDA
# (and transformers 5, numpy, pytest: a typical CUDA image): pack what else bench/gpu_check.sh
# needs into one archive, made here where PyPI answers, for GPU_SITE=... on that machine.
#
#   bash bench/gpu_site.sh [python version, default 3.12] [archive, default .gpu/site.tar.xz]
#
# Three folders, each put on PYTHONPATH by gpu_check.sh where it is needed:
#   ours   qwen-tts and the server's dependencies, at the versions uv.lock pins (transformers 4.x)
#   audio  librosa, soundfile and friends (both the package and faster-qwen3-tts import them)
#   fq     faster-qwen3-tts, its fork of qwen-tts and the transformers 5 it loads with (never
#          beside "ours")
# Versions come from the lock file, so the GPU runs the code CI tests.
set -euo pipefail
PY="${1:-3.12}"
ARCHIVE="${2:-.gpu/site.tar.xz}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

locked() {  # NAME... -> NAME==VERSION as uv.lock pins it
  for name in "$@"; do
    version=$(awk -v n="$name" '$0 == "name = \"" n "\"" {getline; gsub(/version = |"/, ""); print; exit}' uv.lock)
    [ -n "$version" ] || { echo "not in uv.lock: $name" >&2; exit 1; }
    echo "$name==$version"
  done
}

OURS=(qwen-tts transformers huggingface-hub tokenizers fastapi starlette uvicorn pydantic pydantic-core
  annotated-types typing-inspection pydantic-settings python-dotenv av python-multipart websockets
  num2words docopt babel defusedxml cn2an proces opentelemetry-api)
AUDIO=(librosa soxr audioread pooch decorator soundfile cffi pycparser sox platformdirs)

platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
fetch() {  # folder requirement... : wheels for the GPU machine's Python, built here if only an sdist exists
  local folder=$1
  shift
  mkdir -p "$WORK/wheels/$folder"
  for requirement in "$@"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
      "${platforms[@]}" -d "$WORK/wheels/$folder" "$requirement" 2>/dev/null \
      || python3 -m pip wheel -q --no-deps -w "$WORK/wheels/$folder" "$requirement"  # pure Python sdists
  done
  python3 -m pip install -q --no-deps --no-compile --no-index --only-binary=:all: --python-version "$PY" \
    --implementation cp "${platforms[@]}" --target "$WORK/site/$folder" "$WORK/wheels/$folder"/*.whl
}

mapfile -t ours < <(locked "${OURS[@]}")
mapfile -t audio < <(locked "${AUDIO[@]}")
fetch ours "${ours[@]}"
fetch audio "${audio[@]}"
# Not ours to pin, except transformers: 5.17 keeps MimiConfig's rope_theta under rope_parameters,
# and qwen-tts-hf 0.1.1.post1 reads the attribute when it loads onto a GPU (seen on an H200);
# 5.15.1 in turn refuses a tokenizers newer than 0.23.0, which that image had.
fetch fq faster-qwen3-tts "qwen-tts-hf<0.2" transformers==5.15.1 tokenizers==0.22.2
mkdir -p "$(dirname "$ARCHIVE")"
# xz over the unpacked files: half the size of the wheels (a device's upload is capped).
tar cf - -C "$WORK/site" ours audio fq | xz -T0 -8 >"$ARCHIVE"
du -h "$ARCHIVE"
