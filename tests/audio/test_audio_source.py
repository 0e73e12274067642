"""audio_sample sources: base64 forms, data URIs, URLs (SSRF-safe) and allowed local paths."""

import asyncio
import base64
import io
import os

import pytest
import soundfile as sf
from helpers import SR, cpu_settings, tone
from reference_http import ReferenceHTTPServer

from qwen_tts_api.audio import fetch
from qwen_tts_api.audio.reference import AudioSampleError
from qwen_tts_api.audio.source import read_audio_sample


@pytest.fixture(scope="module")
def wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(1.0, 220.0), SR, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def ref_http(wav):
    with ReferenceHTTPServer(wav) as srv:
        yield srv


def read(value: str, **settings) -> bytes:
    return asyncio.run(read_audio_sample(value, cpu_settings(**settings)))


def test_plain_base64_with_slash_and_plus(wav):
    encoded = base64.b64encode(wav).decode()
    assert "/" in encoded or "+" in encoded
    assert read(encoded) == wav


def test_base64_with_line_breaks_and_missing_padding(wav):
    encoded = base64.b64encode(wav).decode().rstrip("=")
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert read(wrapped) == wav


def test_data_uri(wav):
    assert read("data:audio/wav;base64," + base64.b64encode(wav).decode()) == wav


def test_data_uri_must_be_base64():
    with pytest.raises(AudioSampleError, match="base64"):
        read("data:audio/wav,plain-text")


def test_oversize_base64_refused(wav):
    with pytest.raises(AudioSampleError, match="larger"):
        read(base64.b64encode(wav).decode(), audio_sample_max_bytes=1000)


def test_local_paths_refused_by_default(tmp_path, wav):
    (tmp_path / "ref.wav").write_bytes(wav)
    with pytest.raises(AudioSampleError, match="QWEN_TTS_AUDIO_SAMPLE_DIRS"):
        read(str(tmp_path / "ref.wav"))


def test_local_path_inside_allowed_dir(tmp_path, wav):
    (tmp_path / "ref.wav").write_bytes(wav)
    assert read(str(tmp_path / "ref.wav"), audio_sample_dirs=[tmp_path]) == wav


@pytest.mark.parametrize("path", ["/etc/passwd", "{root}/../outside.wav", "{root}/link.wav"])
def test_local_path_escapes_refused(tmp_path, wav, path):
    root = tmp_path / "allowed"
    root.mkdir()
    (tmp_path / "outside.wav").write_bytes(wav)
    os.symlink(tmp_path / "outside.wav", root / "link.wav")
    with pytest.raises(AudioSampleError, match="outside"):
        read(path.format(root=root), audio_sample_dirs=[root])


def test_missing_file_in_allowed_dir(tmp_path):
    with pytest.raises(AudioSampleError, match="does not exist"):
        read(str(tmp_path / "nope.wav"), audio_sample_dirs=[tmp_path])


@pytest.mark.parametrize("value", ["file:///etc/passwd", "ftp://example.com/a.wav", "gopher://x/"])
def test_other_schemes_refused(value):
    with pytest.raises(AudioSampleError, match="http"):
        read(value)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_private_addresses_not_allowed(address):
    assert not fetch.address_allowed(address, allow_private=False)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_allowed(address):
    assert fetch.address_allowed(address, allow_private=False)


def test_url_to_loopback_refused_by_default(ref_http):
    with pytest.raises(AudioSampleError, match="QWEN_TTS_ALLOW_PRIVATE_URLS"):
        read(f"{ref_http.url}/ref.wav")


def test_url_fetch_when_private_allowed(ref_http, wav):
    assert read(f"{ref_http.url}/ref.wav", allow_private_urls=True) == wav


def test_redirect_followed(ref_http, wav):
    assert read(f"{ref_http.url}/redirect", allow_private_urls=True) == wav


def test_redirect_target_is_checked_again(ref_http, monkeypatch):
    # Treat 127.0.0.1 as the only "public" address: the redirect to 127.0.0.2 must be refused.
    monkeypatch.setattr(fetch, "address_allowed", lambda address, allow_private: address == "127.0.0.1")
    with pytest.raises(AudioSampleError, match="private"):
        read(f"{ref_http.url}/redirect-elsewhere")


def test_redirect_loop_stops(ref_http):
    with pytest.raises(AudioSampleError, match="redirected"):
        read(f"{ref_http.url}/loop", allow_private_urls=True)


def test_url_timeout(ref_http):
    with pytest.raises(AudioSampleError, match="within"):
        read(f"{ref_http.url}/slow", allow_private_urls=True, url_timeout_seconds=0.5)


def test_url_size_cap(ref_http):
    with pytest.raises(AudioSampleError, match="larger"):
        read(f"{ref_http.url}/big", allow_private_urls=True, audio_sample_max_bytes=100_000)


def test_url_http_error(ref_http):
    with pytest.raises(AudioSampleError, match="404"):
        read(f"{ref_http.url}/missing", allow_private_urls=True)


def test_unresolvable_host():
    with pytest.raises(AudioSampleError, match="resolved"):
        read("http://no-such-host.invalid/ref.wav")
