"""API keys compared as the server compares them: whole keys only, an admin key apart,
and never the key itself kept as a voice's owner."""

from __future__ import annotations

from helpers import cpu_settings

from qwen_tts_api.api.auth import KeyRing


def test_key_comparison():
    keys = KeyRing(cpu_settings(api_keys=["alpha", "beta"], admin_api_keys=["gamma"]))
    alpha, gamma = keys.viewer("alpha"), keys.viewer("gamma")
    assert alpha is not None and gamma is not None
    assert not alpha.sees_all and gamma.sees_all  # an admin key sees every voice
    assert alpha.owner != gamma.owner and alpha.owner == keys.viewer("alpha").owner  # type: ignore[union-attr]
    assert "alpha" not in (alpha.owner or "")  # a digest, never the key
    for wrong in ("alph", "alphaa", "", "delta", "Alpha"):
        assert keys.viewer(wrong) is None, wrong


def test_the_key_is_read_from_either_scheme_or_elevenlabs_header():
    from qwen_tts_api.api.auth import _bearer

    def scope(*headers: tuple[bytes, bytes]) -> dict:
        return {"headers": list(headers)}

    assert _bearer(scope((b"authorization", b"Bearer sk-1"))) == "sk-1"
    assert _bearer(scope((b"authorization", b"Api-Key sk-2"))) == "sk-2"
    assert _bearer(scope((b"xi-api-key", b"sk-3"))) == "sk-3"  # ElevenLabs' clients (Pipecat)
    assert _bearer(scope((b"xi-api-key", b"sk-3"), (b"authorization", b"Bearer sk-1"))) == "sk-1"
    assert _bearer(scope((b"authorization", b"Basic sk-1"))) is None
    assert _bearer(scope((b"xi-api-key", b"  "))) is None
    assert _bearer(scope()) is None
