"""``GET /v1/models`` and ``GET /v1/models/{id}`` in OpenAI's list shape, and
``GET /v1/audio/models`` (the same list, also as Open WebUI reads it)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..engine.synthesis import Engine
from .errors import APIError
from .protocol import AudioModelList, ModelCard, ModelId, ModelList, error_responses

router = APIRouter()

# What clients send as `model` in the specification's examples; always served.
MODEL_ALIAS = "qwen3-tts"


def model_cards(engine: Engine) -> list[ModelCard]:
    loaded = list(engine.models.values())
    cards = [ModelCard(id=MODEL_ALIAS, created=min(m.created for m in loaded))]
    cards += [ModelCard(id=m.name, created=m.created) for m in loaded]
    return cards


@router.get("/v1/models", response_model=ModelList, responses=error_responses())
async def list_models(request: Request) -> ModelList:
    return ModelList(data=model_cards(request.app.state.engine))


@router.get("/v1/audio/models", response_model=AudioModelList, responses=error_responses())
async def list_audio_models(request: Request) -> AudioModelList:
    cards = model_cards(request.app.state.engine)
    return AudioModelList(data=cards, models=[ModelId(id=card.id) for card in cards])


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses=error_responses(404))
async def get_model(model_id: str, request: Request) -> ModelCard:
    for card in model_cards(request.app.state.engine):
        if card.id == model_id:
            return card
    raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
