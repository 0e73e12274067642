"""Keeps `uv run python main.py` from the specification working: same as `qwen-tts-api serve`."""

import sys

from qwen_tts_api.cli import serve

if __name__ == "__main__":
    sys.exit(serve())
