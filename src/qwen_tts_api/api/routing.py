"""Which model serves a request, and the error when it is not loaded."""

from __future__ import annotations

from ..engine.loading import LoadedModel
from ..engine.synthesis import Engine
from .errors import invalid_request

_MODEL_ENV = {"customvoice": "CUSTOMVOICE_MODEL_PATH", "base": "BASE_MODEL_PATH"}
_NEEDS = {
    "customvoice": "built-in voices need the CustomVoice model",
    "base": "voice cloning (audio_sample and saved voices) needs the Base model",
}


def require_model(engine: Engine, kind: str, param: str) -> LoadedModel:
    model = engine.model(kind)
    if model is None:
        raise invalid_request(f"{_NEEDS[kind]}, which this server has not loaded (set {_MODEL_ENV[kind]})",
                              param=param, code="model_not_loaded")
    return model
