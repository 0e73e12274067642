"""``GET /v1/models`` and ``GET /v1/models/{id}`` in OpenAI's list shape, and
``GET /v1/audio/models`` (the same list, also as Open WebUI reads it)."""

from __future__ import annotations

from fastapi import APIRouter

from ..constants import TASK_TYPES, ModelKind
from ..engine.interface import SpeechEngine
from .errors import APIError
from .protocol import AudioModelList, ModelCard, ModelId, ModelList, error_responses
from .routing import MODEL_ALIAS, VOICEDESIGN_ALIAS
from .state import EngineDep

router = APIRouter()


def model_cards(engine: SpeechEngine) -> list[ModelCard]:
    """The aliases, then each loaded model with its family (``task_type``)."""
    loaded = list(engine.models.values())
    cards = [ModelCard(id=MODEL_ALIAS, created=min(m.created for m in loaded))]
    if (design := engine.model(ModelKind.VOICEDESIGN)) is not None:
        cards.append(ModelCard(id=VOICEDESIGN_ALIAS, created=design.created, task_type="VoiceDesign"))
    cards += [ModelCard(id=m.name, created=m.created, task_type=TASK_TYPES[m.kind]) for m in loaded]
    return cards


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True, responses=error_responses())
async def list_models(engine: EngineDep) -> ModelList:
    return ModelList(data=model_cards(engine))


@router.get(
    "/v1/audio/models", response_model=AudioModelList, response_model_exclude_none=True, responses=error_responses()
)
async def list_audio_models(engine: EngineDep) -> AudioModelList:
    cards = model_cards(engine)
    return AudioModelList(data=cards, models=[ModelId(id=card.id) for card in cards])


@router.get(
    "/v1/models/{model_id}", response_model=ModelCard, response_model_exclude_none=True, responses=error_responses(404)
)
async def get_model(model_id: str, engine: EngineDep) -> ModelCard:
    for card in model_cards(engine):
        if card.id == model_id:
            return card
    raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
