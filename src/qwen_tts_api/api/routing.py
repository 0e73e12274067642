"""Which model serves a request, and the error when it is not loaded."""

from __future__ import annotations

from ..constants import MODEL_PATH_ENV, ModelKind
from ..engine.loading import LoadedModel
from ..engine.synthesis import Engine
from .errors import invalid_request

_NEEDS = {
    ModelKind.CUSTOMVOICE: "built-in voices need the CustomVoice model",
    ModelKind.BASE: "voice cloning (audio_sample and saved voices) needs the Base model",
}


def require_model(engine: Engine, kind: ModelKind, param: str) -> LoadedModel:
    model = engine.model(kind)
    if model is None:
        raise invalid_request(
            f"{_NEEDS[kind]}, which this server has not loaded (set {MODEL_PATH_ENV[kind]})",
            param=param,
            code="model_not_loaded",
        )
    return model
