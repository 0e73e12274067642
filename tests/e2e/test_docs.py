"""The Python recipes in docs/CLIENTS.md run as written against a live server."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import soundfile as sf
from helpers import SR, decode_audio, tone

DOC = Path(__file__).resolve().parents[2] / "docs" / "CLIENTS.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_client_recipes_run(server, tmp_path, monkeypatch):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    sf.write("me.wav", tone(2.0, 200.0), SR)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace("http://localhost:8000", server.url), str(DOC), "exec"), namespace)
    assert decode_audio(Path("hello.mp3").read_bytes()).duration > 0.5
    assert decode_audio(Path("designed.mp3").read_bytes()).duration > 0.5
    assert decode_audio(Path("host.mp3").read_bytes()).duration > 0.5
    assert Path("captions.vtt").read_text().startswith("WEBVTT")
    heard = namespace["heard"]
    assert [w["word"] for w in heard] == ["Interrupt", "me", "whenever", "you", "like."]
    said = [{"word": w, "start_ms": 300 * i, "end_ms": 300 * i + 250} for i, w in enumerate(["a", "b", "c"])]
    assert namespace["heard_until"](said, 450) == "a b"
    assert Path("speech.pcm").stat().st_size > SR  # more than half a second of 16-bit samples
    assert namespace["named"]("a%2C%20b, c%0A (and 2 more)") == ["a, b", "c\n"]
    assert namespace["named"]("(and 1 more)") == [] and namespace["named"](None) == []
    frames = list(namespace["pcm_frames"]("Frames for a voice agent."))
    assert frames and all(len(frame) == 960 for frame in frames)

    async def tokens():
        for token in ["Tokens ", "from a ", "language model, ", "spoken as they come."]:
            yield token

    played: list[bytes] = []
    asyncio.run(namespace["speak"](tokens(), played.append))
    audio = b"".join(played)
    assert len(audio) > SR and len(audio) % 2 == 0  # more than half a second of 16-bit samples
