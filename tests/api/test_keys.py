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
