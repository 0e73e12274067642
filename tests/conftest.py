"""Shared fixtures: demo models (built once), live servers, the real openai client.
Helpers the tests import are in helpers.py; each folder has its own (``runtime_fakes.py``,
``live_socket.py``, ...).

Tiers, chosen explicitly: a test that starts a server is ``slow``: it uses a fixture made
with ``helpers.server_fixture`` (as ``server``, ``http`` and ``client`` are), lives in
``tests/e2e``, or is marked ``@pytest.mark.slow`` itself; one that drives Chromium is marked
``browser``. A server started by a test outside the slow tier fails that test
(``helpers.require_slow_tier``), so no test moves between tiers unseen.
``uv run pytest -m "not slow"`` is the inner loop, the whole suite what CI runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import helpers
import httpx
import pytest
import soundfile as sf
from helpers import SERVER_FIXTURES, SR, LiveServer, cpu_settings, server_fixture, tone

from qwen_tts_api.cli import quiet_third_party_logs

if TYPE_CHECKING:
    import openai

quiet_third_party_logs()


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> dict[str, Path]:
    from qwen_tts_api.devtools.demo_models import build_demo_models

    return build_demo_models(tmp_path_factory.mktemp("demo-models"), seed=0)


@pytest.fixture(scope="session")
def demo_aligner(tmp_path_factory) -> Path:
    """A tiny random-weight forced aligner (``qwen-tts-api demo-models`` writes it as ``aligner/``)."""
    from qwen_tts_api.devtools.demo_aligner import build_aligner

    return build_aligner(tmp_path_factory.mktemp("demo-aligner"), seed=0)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The one directory the main test server may read reference audio from."""
    directory = tmp_path_factory.mktemp("samples")
    sf.write(directory / "ref.wav", tone(2.0, 220.0), SR)
    return directory


@server_fixture(scope="session")
def server(demo_models, demo_aligner, sample_dir) -> Iterator[LiveServer]:
    settings = cpu_settings(
        aligner_model_path=demo_aligner,
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


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.path.parts or SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures: whether it may start a server."""
    helpers.slow_tier.allowed = item.get_closest_marker("slow") is not None
