"""Which model serves a request, and the error when it is not loaded.

``model`` picks a family only for VoiceDesign (its id, or ``VOICEDESIGN_ALIAS``): the
other two are told apart by the voice, as the specification routes them, so any other
value is accepted for compatibility.
"""

from __future__ import annotations

from ..constants import MODEL_PATH_ENV, ModelKind
from ..engine.interface import SpeechEngine
from ..engine.models.loading import LoadedModel
from .errors import invalid_request

# What clients send as `model` in the specification's examples; always served.
MODEL_ALIAS = "qwen3-tts"
# Sends a request to the VoiceDesign model, whatever its id.
VOICEDESIGN_ALIAS = "qwen3-tts-voicedesign"

_NEEDS = {
    ModelKind.CUSTOMVOICE: "built-in voices need the CustomVoice model",
    ModelKind.BASE: "voice cloning (audio_sample and saved voices) needs the Base model",
    ModelKind.VOICEDESIGN: "voices designed from a description need the VoiceDesign model",
}


def require_model(engine: SpeechEngine, kind: ModelKind, param: str, needs: str | None = None) -> LoadedModel:
    """The loaded model of ``kind``, or a 400 on ``param`` naming the variable that loads it
    (``needs``: what the request wanted it for, if not the family's usual use)."""
    model = engine.model(kind)
    if model is None:
        raise invalid_request(
            f"{needs or _NEEDS[kind]}, which this server has not loaded (set {MODEL_PATH_ENV[kind]})",
            param=param,
            code="model_not_loaded",
        )
    return model


def names_voicedesign(engine: SpeechEngine, model: str | None) -> bool:
    """Whether ``model`` asks for VoiceDesign: the alias, the loaded VoiceDesign model's id,
    or any id whose name ends in VoiceDesign, bare or as a Hub id
    (``Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign``, as vLLM-Omni's clients send it). The last one
    gets a 400 naming VOICEDESIGN_MODEL_PATH when it is not loaded, not another family's voice."""
    if model is None:
        return False
    name = model.strip().rsplit("/", 1)[-1]
    if name.lower().endswith("voicedesign"):  # VOICEDESIGN_ALIAS too
        return True
    loaded = engine.model(ModelKind.VOICEDESIGN)
    return loaded is not None and name == loaded.name
