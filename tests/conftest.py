"""Shared fixtures: demo models (built once), live servers, the real openai client.
Helpers the tests import are in helpers.py.

Tiers: a test that starts a server (the shared ``server``, its own ``LiveServer``, the CLI in
a subprocess) is marked ``slow``, and one that drives Chromium ``browser``, here, from what
it uses; ``uv run pytest -m "not slow"`` is the inner loop, the whole suite what CI runs."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import soundfile as sf
from helpers import SR, LiveServer, cpu_settings, tone

from qwen_tts_api.cli import quiet_third_party_logs

if TYPE_CHECKING:
    import openai

quiet_third_party_logs()


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> dict[str, Path]:
    from qwen_tts_api.devtools.demo_models import build_demo_models

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


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


_SERVER_FIXTURES = {"server", "http", "client"}
_STARTS_A_SERVER = ("LiveServer(", "BackgroundServer(", "subprocess.", "serving(", "_serve(")


def _sources(item: pytest.Item) -> list[str]:
    """The test's own code and that of every fixture it uses."""
    functions = [getattr(item, "function", None)]
    functions += [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]  # type: ignore[attr-defined]
    sources = []
    for function in functions:
        with contextlib.suppress(OSError, TypeError):  # no source to read (a builtin)
            sources.append(inspect.getsource(function))
    return sources


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        sources = _sources(item)
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or any(
            start in source for source in sources for start in _STARTS_A_SERVER
        ):
            item.add_marker(pytest.mark.slow)
        if any("chromium" in source.lower() or "playwright" in source for source in sources):
            item.add_marker(pytest.mark.browser)
