# qwen-tts-api, CPU image.
# Models are not baked in: mount them and point CUSTOMVOICE_MODEL_PATH / BASE_MODEL_PATH at them.
# Python 3.11, the version CI tests with: uv.lock resolves other package versions on other Pythons.
FROM python:3.11-slim

# UV_NO_CACHE: uv downloads into a temporary directory and removes it, so no layer keeps a
# second copy of every wheel next to the installed environment.
ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
# g++: QWEN_TTS_COMPILE=on compiles the step's graphs to C++ at start (torch.compile on a CPU).
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir uv \
 && useradd --create-home --uid 1000 app \
 && mkdir /data && chown app /data
WORKDIR /app

# Dependencies first, so code changes do not reinstall torch.
# torch's PyPI wheel links its CUDA libraries, so they stay even here (a CPU-only torch is
# published only on PyTorch's own index, which uv.lock does not use); Triton only compiles
# GPU kernels and is left out.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --no-install-package triton
COPY main.py ./
COPY src ./src
RUN uv sync --frozen --no-dev --no-install-package triton

ENV PATH="/app/.venv/bin:$PATH" \
    QWEN_TTS_DEVICE=cpu \
    QWEN_TTS_DTYPE=float32 \
    QWEN_TTS_ATTN="" \
    HOST=0.0.0.0 \
    PORT=8000 \
    QWEN_TTS_DATA_DIR=/data
# Saved voices: mount a volume here to keep them across containers.
VOLUME ["/data"]
USER app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/health', timeout=4)"
CMD ["python", "main.py"]
