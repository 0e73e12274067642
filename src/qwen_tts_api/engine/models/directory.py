"""Checks that a directory holds a Qwen3-TTS checkpoint, without importing torch.

Run before start-up so that a wrong path fails in a second with a clear message instead
of deep inside transformers after the heavy imports.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...constants import MODEL_PATH_ENV, ModelKind

# config.json tts_model_type of each family
EXPECTED_TYPES = {ModelKind.CUSTOMVOICE: "custom_voice", ModelKind.BASE: "base", ModelKind.VOICEDESIGN: "voice_design"}


class ModelDirectoryError(ValueError):
    """A configured model path is not a usable Qwen3-TTS model directory."""


def _has_weights(directory: Path) -> bool:
    return (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file()


def read_config(directory: Path, where: str, error: type[ValueError] = ModelDirectoryError) -> dict:
    """``directory``'s config.json, or ``error`` saying what is wrong (``where``: the variable
    and value that named it)."""
    if not directory.is_dir():
        raise error(f"{where} is not a directory")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise error(f"{where} has no config.json: not a model directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{where}: config.json is unreadable ({exc})") from exc
    if not isinstance(config, dict):
        raise error(f"{where}: config.json is not a JSON object")
    return config


def check_model_dir(kind: ModelKind, directory: Path, shown: str | None = None) -> None:
    """Raise ``ModelDirectoryError`` naming the variable and the missing piece (``shown``: the
    value as configured, when it is not the directory itself: a Hub id)."""
    env = MODEL_PATH_ENV[kind]
    where = f"{env}={directory}" if shown is None else f"{env}={shown} (snapshot {directory})"
    config = read_config(directory, where)
    if config.get("model_type") != "qwen3_tts":
        raise ModelDirectoryError(
            f"{where} is not a Qwen3-TTS model (config.json model_type={config.get('model_type')!r})"
        )
    model_type = config.get("tts_model_type")
    if model_type != EXPECTED_TYPES[kind]:
        raise ModelDirectoryError(f"{where} holds a {model_type!r} model; {env} needs a {EXPECTED_TYPES[kind]!r} model")
    missing = [
        name
        for name, present in (
            ("model weights (model.safetensors)", _has_weights(directory)),
            ("generation_config.json", (directory / "generation_config.json").is_file()),
            ("speech_tokenizer/config.json", (directory / "speech_tokenizer" / "config.json").is_file()),
            (
                "tokenizer files (vocab.json or tokenizer.json)",
                (directory / "vocab.json").is_file() or (directory / "tokenizer.json").is_file(),
            ),
        )
        if not present
    ]
    if missing:
        raise ModelDirectoryError(f"{where} is incomplete: missing {', '.join(missing)}")
