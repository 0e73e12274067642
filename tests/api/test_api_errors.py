"""Bad input gets OpenAI's error envelope with the right status; the server keeps serving."""

import base64

import openai
import pytest
from helpers import LiveServer, cpu_settings, error_of, server_fixture

from qwen_tts_api.engine.runtime.voicing import Voicing

BASE = {"model": "qwen3-tts", "input": "Hi.", "voice": "alloy"}


@pytest.mark.parametrize(
    "change, param",
    [
        ({"input": ""}, "input"),
        ({"input": "   \n "}, "input"),
        ({"input": "x" * 4097}, "input"),
        ({"input": None}, "input"),
        ({"model": None}, "model"),
        ({"response_format": "ogg"}, "response_format"),
        ({"speed": 0.2}, "speed"),
        ({"speed": 4.5}, "speed"),
        ({"speed": "fast"}, "speed"),
        ({"language": "Klingon"}, "language"),
        ({"voice": "nobody"}, "voice"),
        ({"voice": 7}, "voice"),
        ({"stream_format": "chunks"}, "stream_format"),
        ({"audio_sample": ""}, "audio_sample"),
        ({"audio_sample": "QUJD" * 100}, "audio_sample"),
        ({"audio_sample": base64.b64encode(b"RIFF....WAVEjunk" * 40).decode()}, "audio_sample"),
        ({"audio_sample": "file:///etc/passwd"}, "audio_sample"),
        ({"audio_sample": "/etc/passwd"}, "audio_sample"),
        ({"audio_sample": "../../etc/passwd"}, "audio_sample"),
        ({"audio_sample": "http://127.0.0.1:9/none.wav"}, "audio_sample"),
    ],
)
def test_invalid_requests(http, change, param):
    body = {**BASE, **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = http.post("/v1/audio/speech", json=body)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert "Traceback" not in r.text


def test_missing_field_named(http):
    err = error_of(http.post("/v1/audio/speech", json={"input": "Hi."}))
    assert err["param"] == "model" and err["code"] == "missing_required_parameter"


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_body_not_an_object(http, content):
    r = http.post("/v1/audio/speech", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert error_of(r)["type"] == "invalid_request_error"


def test_sdk_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="qwen3-tts", voice="nobody", input="Hi.")
    assert caught.value.status_code == 400 and caught.value.body["param"] == "voice"


def test_unknown_route_and_method(http, client):
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and error_of(r)["type"] == "not_found_error"
    r = http.get("/v1/audio/speech")
    assert r.status_code == 405 and error_of(r)["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_unexpected_failure_is_500_without_traceback_and_server_recovers(server, http, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    with monkeypatch.context() as patched:
        patched.setattr(Voicing, "segment_row", broken)
        r = http.post("/v1/audio/speech", json=BASE)
    assert r.status_code == 500
    err = error_of(r)
    assert err["type"] == "server_error"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert http.post("/v1/audio/speech", json={**BASE, "response_format": "wav"}).status_code == 200


@server_fixture(scope="module")
def customvoice_only(demo_models):
    with LiveServer(cpu_settings(customvoice_model_path=demo_models["customvoice"])) as live:
        yield live


def test_clone_needs_base_model(customvoice_only, sample_dir):
    import httpx

    r = httpx.post(
        f"{customvoice_only.url}/v1/audio/speech",
        timeout=60,
        json={**BASE, "audio_sample": base64.b64encode((sample_dir / "ref.wav").read_bytes()).decode()},
    )
    assert r.status_code == 400
    err = error_of(r)
    assert err["param"] == "audio_sample" and err["code"] == "model_not_loaded"
    assert "BASE_MODEL_PATH" in err["message"]


def test_server_still_serves_after_errors(client):
    assert client.audio.speech.create(model="qwen3-tts", voice="alloy", input="Hi.", response_format="wav").content


def test_openapi_describes_what_the_server_sends(http):
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def schema_of(path: str, method: str, status: str) -> dict:
        content = spec["paths"][path][method]["responses"][status]["content"]
        return content["application/json"]["schema"]

    def fields(ref: dict) -> set[str]:
        return set(schemas[ref["$ref"].rsplit("/", 1)[1]]["properties"])

    assert fields(schema_of("/v1/models", "get", "200")) == {"object", "data"}
    assert fields(schema_of("/v1/audio/voices", "get", "200")) == {"object", "data", "voices"}
    assert fields(schema_of("/v1/audio/models", "get", "200")) == {"object", "data", "models"}
    assert {"object", "id", "name", "type"} <= fields(schema_of("/v1/audio/voices", "post", "200"))
    assert fields(schema_of("/v1/audio/voices/{voice_id}", "delete", "200")) == {"object", "id", "deleted"}
    for status in ("400", "401", "429", "500", "503", "504"):
        assert fields(schema_of("/v1/audio/speech", "post", status)) == {"error"}, status
    assert set(schemas["ErrorDetail"]["properties"]) == {"message", "type", "param", "code"}
    for status in ("400", "413", "429"):
        assert fields(schema_of("/v1/audio/voices", "post", status)) == {"error"}, status
    assert fields(schema_of("/v1/audio/voices/{voice_id}", "get", "404")) == {"error"}
    # The two ways to create a voice: an upload, or a design (also as JSON).
    created = spec["paths"]["/v1/audio/voices"]["post"]["requestBody"]["content"]
    assert [fields(ref) for ref in created["multipart/form-data"]["schema"]["oneOf"]] == [
        {"name", "audio_sample", "type", "consent", "audio_sample_text"},
        {"name", "type", "prompt", "script_hint", "language", "seed", "consent"},
    ]
    assert fields(created["application/json"]["schema"]) >= {"name", "prompt"}
    assert {"prompt", "type"} <= set(schemas["VoiceCard"]["properties"])
    assert set(schemas["ModelCard"]["properties"]) >= {"id", "task_type"}
    assert "task_type" in schemas["SpeechRequest"]["properties"]
    # Audio and Server-Sent Events for speech, each event typed.
    speech = spec["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
    assert {"audio/mpeg", "audio/wav", "audio/pcm", "text/event-stream"} <= set(speech)
    events = [ref["$ref"].rsplit("/", 1)[1] for ref in speech["text/event-stream"]["schema"]["oneOf"]]
    assert events == ["SpeechAudioDelta", "SpeechAudioDone", "SpeechAudioTimestamps", "SpeechStreamError"]
    assert all(event in schemas for event in events) and "SpeechUsage" in schemas
    assert fields(schema_of("/health", "get", "503")) == {"status", "error"}
    assert fields(schema_of("/ready", "get", "200")) == {
        "status",
        "models",
        "warmed_up",
        "error",
        "word_timings",
        "aligner",
        "aligner_error",
        "step",
    }
    # Word timings: every body and event they travel in.
    assert fields(schema_of("/v1/audio/speech/with-timestamps", "post", "200")) >= {"words", "captions", "estimated"}
    eleven = fields(schema_of("/v1/text-to-speech/{voice_id}/with-timestamps", "post", "200"))
    assert eleven >= {"audio_base64", "alignment", "normalized_alignment"}
    assert "/v1/text-to-speech/{voice_id}/stream/with-timestamps" in spec["paths"]
    assert {"LiveAudioChunk", "LiveAudioTimestamps", "TimestampInfo", "WordTimestamp"} <= set(schemas)
    # Validation errors go out as 400 in the envelope: no route claims FastAPI's 422.
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
    assert "HTTPValidationError" not in schemas
