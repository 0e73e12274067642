"""Facts every layer shares: the codec's audio rate and frame, the model families and the
variables that name their checkpoints, and the published speakers' spelling."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

SAMPLE_RATE = 24000  # Hz: what the 12 Hz codec decodes to and encodes from
SAMPLES_PER_FRAME = 1920  # one codec frame
FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE  # 80 ms


class ModelKind(StrEnum):
    """The model families this server loads (``tts_model_type`` ``custom_voice`` / ``base`` /
    ``voice_design``)."""

    CUSTOMVOICE = "customvoice"
    BASE = "base"
    VOICEDESIGN = "voicedesign"


MODEL_PATH_ENV = {
    ModelKind.CUSTOMVOICE: "CUSTOMVOICE_MODEL_PATH",
    ModelKind.BASE: "BASE_MODEL_PATH",
    ModelKind.VOICEDESIGN: "VOICEDESIGN_MODEL_PATH",
}
# What the vLLM-Omni protocol (``task_type``) calls each family.
TaskType = Literal["CustomVoice", "Base", "VoiceDesign"]
TASK_TYPES: dict[ModelKind, TaskType] = {
    ModelKind.CUSTOMVOICE: "CustomVoice",
    ModelKind.BASE: "Base",
    ModelKind.VOICEDESIGN: "VoiceDesign",
}

# The nine speakers of the published CustomVoice checkpoints, spelled as documented.
QWEN_SPEAKERS = ["Vivian", "Serena", "Uncle_Fu", "Dylan", "Eric", "Ryan", "Aiden", "Ono_Anna", "Sohee"]
_DISPLAY = {name.lower(): name for name in QWEN_SPEAKERS}


def display_speaker_name(name: str) -> str:
    """Model configs store speakers lower-case; show the documented spelling."""
    return _DISPLAY.get(name.lower(), name.title())
