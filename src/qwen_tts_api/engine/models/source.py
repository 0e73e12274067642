"""Where each model's files are: a directory, or a Hugging Face Hub repo id resolved through
the Hub's own cache (``huggingface_hub``: ``HF_HOME``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, a
progress bar on the first download). With no model variable set, the server serves the
published 0.6B models from the Hub. No torch here: this runs before the heavy imports, so a
wrong value fails in a second.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ...constants import MODEL_PATH_ENV, ModelKind
from .directory import ModelDirectoryError, check_model_dir

log = logging.getLogger(__name__)

# What `qwen-tts-api serve` serves when no model variable is set.
DEFAULT_HUB_MODELS = {
    ModelKind.CUSTOMVOICE: "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
    ModelKind.BASE: "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelSource:
    kind: ModelKind
    path: Path  # the directory the package loads
    name: str  # what /v1/models calls it: the directory's or the repo's name
    hub_id: str | None = None


def is_hub_id(value: str) -> bool:
    """``owner/name`` that is not an existing path (a directory always wins)."""
    return bool(_REPO_ID.match(value)) and not Path(value).expanduser().exists()


def resolve_source(kind: ModelKind, value: str) -> ModelSource:
    """A configured value as a checked model directory (downloading a Hub id if need be)."""
    if is_hub_id(value):
        path = _snapshot(kind, value)
        check_model_dir(kind, path, shown=value)
        return ModelSource(kind, path, value.split("/", 1)[1], hub_id=value)
    path = Path(value).expanduser()
    check_model_dir(kind, path)
    return ModelSource(kind, path, path.resolve().name)


def resolve_sources(configured: dict[ModelKind, str]) -> dict[ModelKind, ModelSource]:
    """Every configured model (exactly those), or the published 0.6B pair from the Hub when none is."""
    if not configured:
        configured = dict(DEFAULT_HUB_MODELS)
        log.info(
            "no model configured (CUSTOMVOICE_MODEL_PATH, BASE_MODEL_PATH, VOICEDESIGN_MODEL_PATH): serving %s "
            "and %s from the Hugging Face Hub (downloaded once into its cache)",
            *configured.values(),
        )
    return {kind: resolve_source(kind, value) for kind, value in configured.items()}


def _snapshot(kind: ModelKind, repo_id: str) -> Path:
    return hub_snapshot(MODEL_PATH_ENV[kind], repo_id)


def hub_snapshot(env: str, repo_id: str) -> Path:
    """The Hub repo ``repo_id`` in the Hub's cache (downloaded if need be); ``env``: the
    variable that named it, for the error."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id))
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise ModelDirectoryError(
            f"{env}={repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: "
            f"download it once with network access, or set {env} to a model directory"
        ) from exc
    except Exception as exc:  # not found, gated, no space, ...: say which model and why
        raise ModelDirectoryError(
            f"{env}={repo_id} could not be fetched from the Hugging Face Hub ({type(exc).__name__}: {exc})"
        ) from exc
