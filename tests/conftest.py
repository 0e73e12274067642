"""Shared fixtures: demo models (built once), live servers, the real openai client.
Helpers the tests import are in helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import soundfile as sf
from helpers import SR, LiveServer, cpu_settings, tone

from qwen_tts_api.cli import quiet_third_party_logs

quiet_third_party_logs()


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> dict[str, Path]:
    from qwen_tts_api.engine.demo_models import build_demo_models

    return build_demo_models(tmp_path_factory.mktemp("demo-models"), seed=0)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The one directory the main test server may read reference audio from."""
    directory = tmp_path_factory.mktemp("samples")
    sf.write(directory / "ref.wav", tone(2.0, 220.0), SR)
    return directory


@pytest.fixture(scope="session")
def server(demo_models, sample_dir) -> Iterator[LiveServer]:
    settings = cpu_settings(
        customvoice_model_path=demo_models["customvoice"],
        base_model_path=demo_models["base"],
        voicedesign_model_path=demo_models["voicedesign"],
        audio_sample_dirs=[sample_dir],
        allow_private_urls=True,
    )
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return server.openai()


@pytest.fixture()
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c
