"""What the start-up probes found, kept per machine and model in the data directory.

The probes (``first_chunks.probe_first_chunks``, ``streaming_decoder.probe_decoding_together``)
decode the same codes several ways and compare the bits: seconds on a small CPU, and the
answer depends only on the machine, the PyTorch build, its thread count, the model's files
and the settings they were asked with. A restart with all of those the same reads the answer
instead of measuring it again; anything different is a new key, so the probe runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from ..models.loading import LoadedModel
from ..models.precision import cpu_flags

log = logging.getLogger(__name__)

FILE_NAME = "probes.json"


def _file_identity(path: Path) -> list[Any]:
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _model_identity(model: LoadedModel) -> list[Any]:
    folder = model.path.resolve()
    files = [folder / "config.json", folder / "model.safetensors", folder / "model.safetensors.index.json"]
    files += [folder / "speech_tokenizer" / "config.json", folder / "speech_tokenizer" / "model.safetensors"]
    return [_file_identity(file) for file in files]


def _machine_identity() -> list[Any]:
    import torch

    cpu = next((line for line in _cpuinfo_lines() if line.startswith("model name")), platform.processor())
    return [cpu, sorted(cpu_flags()), torch.__version__, torch.get_num_threads(), os.cpu_count()]


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


class ProbeCache:
    """``directory`` None: nothing is kept (every start probes)."""

    def __init__(self, directory: Path | None):
        self.path = None if directory is None else directory / FILE_NAME

    def key(self, probe: str, model: LoadedModel, *details: Any) -> str:
        codec = model.tts.model.speech_tokenizer.model
        parts = [probe, _machine_identity(), _model_identity(model), str(next(codec.parameters()).dtype), details]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        return self._read().get(key)

    def put(self, key: str, value: Any) -> None:
        if self.path is None:
            return
        found = {**self._read(), key: value}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(found, indent=1), encoding="utf-8")
            temporary.replace(self.path)
        except OSError as exc:  # a read-only data directory: the next start probes again
            log.warning("could not keep the start-up probes' results in %s (%s)", self.path, exc)

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            found = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}
