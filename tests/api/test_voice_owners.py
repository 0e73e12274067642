"""With API keys, a saved voice belongs to the key that made it: other keys can neither
see, speak with nor delete it (a 404 or an unknown voice, as if it did not exist), on HTTP
and on the WebSocket; admin keys see all; voices saved before owners existed are the
admin's unless shared."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import LiveServer, capped_copy, cpu_settings, error_of, server_fixture, tone_wav
from safetensors import safe_open
from websockets.sync.client import connect

KEYS = {"a": "sk-owner-a", "b": "sk-owner-b", "admin": "sk-admin"}
SPEECH = {"model": "qwen3-tts", "input": "Mine.", "response_format": "pcm", "stream": False}


def keyed_server(demo_models, models: Path, data_dir: Path, share: bool = False) -> LiveServer:
    return LiveServer(
        cpu_settings(
            base_model_path=capped_copy(demo_models["base"], models, frames=4),
            data_dir=data_dir,
            api_keys=[KEYS["a"], KEYS["b"]],
            admin_api_keys=[KEYS["admin"]],
            share_unowned_voices=share,
        )
    )


@server_fixture(scope="module")
def data_dir(demo_models, tmp_path_factory) -> Path:
    """A voices folder with one voice saved by a server without keys (so without an owner)."""
    directory = tmp_path_factory.mktemp("owned-voices")
    models = tmp_path_factory.mktemp("models")
    settings = cpu_settings(base_model_path=capped_copy(demo_models["base"], models, frames=4), data_dir=directory)
    with LiveServer(settings) as keyless, httpx.Client(base_url=keyless.url, timeout=120) as http:
        upload(http, "Old timer", 307.0)
    return directory


@pytest.fixture(scope="module")
def owned(demo_models, data_dir, tmp_path_factory) -> Iterator[dict[str, httpx.Client]]:
    with keyed_server(demo_models, tmp_path_factory.mktemp("models"), data_dir) as live:
        clients = {
            who: httpx.Client(base_url=live.url, timeout=120, headers={"Authorization": f"Bearer {key}"})
            for who, key in KEYS.items()
        }
        clients["url"] = live.url  # type: ignore[assignment]
        yield clients
        for client in clients.values():
            if isinstance(client, httpx.Client):
                client.close()


def upload(http: httpx.Client, name: str, freq: float) -> dict:
    r = http.post("/v1/audio/voices", data={"name": name}, files={"audio_sample": ("ref.wav", tone_wav(1.5, freq))})
    assert r.status_code == 200, r.text
    return r.json()


def names(http: httpx.Client) -> set[str]:
    return {voice["name"] for voice in http.get("/v1/audio/voices").json()["data"] if "created_at" in voice}


def test_two_keys_cannot_see_use_or_delete_each_others_voices(owned):
    a, b, admin = owned["a"], owned["b"], owned["admin"]
    mine = upload(a, "Narrator", 311.0)
    assert "Narrator" in names(a) and "Narrator" not in names(b)
    # B cannot get, delete or speak with it: the same answers as for a voice that does not exist.
    for r in (b.get(f"/v1/audio/voices/{mine['id']}"), b.delete(f"/v1/audio/voices/{mine['id']}")):
        assert r.status_code == 404 and error_of(r)["code"] == "voice_not_found"
    missing = b.get("/v1/audio/voices/voice_000000000000000000000000")
    assert (
        error_of(missing)["message"].replace("0" * 24, mine["id"][6:])
        == error_of(b.get(f"/v1/audio/voices/{mine['id']}"))["message"]
    )
    for voice in ({"id": mine["id"]}, mine["id"], "Narrator"):
        r = b.post("/v1/audio/speech", json={**SPEECH, "voice": voice})
        assert r.status_code == 400 and error_of(r)["param"] == "voice", voice
        assert "Narrator" not in error_of(r)["message"] or voice == "Narrator"  # the list names only B's voices
    # B may have a Narrator of its own; each key speaks with its own.
    theirs = upload(b, "Narrator", 313.0)
    assert theirs["id"] != mine["id"]
    for http, voice in ((a, mine), (b, theirs)):
        r = http.post("/v1/audio/speech", json={**SPEECH, "voice": "Narrator"})
        assert r.status_code == 200 and r.content
        assert http.get(f"/v1/audio/voices/{voice['id']}").status_code == 200
    # The admin key sees both (and the voice saved before owners), and may delete either.
    assert {"Narrator", "Old timer"} <= names(admin)
    assert admin.delete(f"/v1/audio/voices/{theirs['id']}").status_code == 200
    assert b.get(f"/v1/audio/voices/{theirs['id']}").status_code == 404
    assert a.delete(f"/v1/audio/voices/{mine['id']}").status_code == 200


def test_the_owner_is_a_digest_never_the_key(owned, data_dir):
    voice = upload(owned["a"], "Signed", 317.0)
    with safe_open(str(data_dir / "voices" / f"{voice['id']}.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["owner"] and all(key not in json.dumps(meta) for key in KEYS.values())


def test_voices_saved_before_owners_are_the_admins_unless_shared(owned, demo_models, data_dir, tmp_path_factory):
    assert "Old timer" not in names(owned["a"]) and "Old timer" in names(owned["admin"])
    r = owned["a"].post("/v1/audio/speech", json={**SPEECH, "voice": "Old timer"})
    assert r.status_code == 400
    with (
        keyed_server(demo_models, tmp_path_factory.mktemp("models"), data_dir, share=True) as shared,
        httpx.Client(base_url=shared.url, timeout=120, headers={"Authorization": f"Bearer {KEYS['b']}"}) as b,
    ):
        assert "Old timer" in names(b)
        r = b.post("/v1/audio/speech", json={**SPEECH, "voice": "Old timer"})
        assert r.status_code == 200


def test_on_the_websocket_too(owned):
    a, b = owned["a"], owned["b"]
    voice = upload(a, "Socket voice", 331.0)
    url = owned["url"].replace("http://", "ws://") + "/v1/audio/speech/stream"  # type: ignore[union-attr]
    for key, allowed in ((KEYS["b"], False), (KEYS["a"], True)):
        with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30) as ws:
            ws.send(json.dumps({"type": "session.config", "voice": {"id": voice["id"]}, "max_new_tokens": 4}))
            ws.send(json.dumps({"type": "input.text", "text": "Whose voice?"}))
            ws.send(json.dumps({"type": "input.done"}))
            first = json.loads(ws.recv(timeout=60))
            if allowed:
                assert first["type"] == "audio.start"
            else:
                assert first["type"] == "error" and first["code"] == "voice_not_found"
    assert b.get(f"/v1/audio/voices/{voice['id']}").status_code == 404
