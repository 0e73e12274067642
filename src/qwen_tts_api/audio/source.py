"""Turns an ``audio_sample`` string (base64, data: URI, URL or local path) into bytes.

Safe by default: local paths are read only inside directories named in
QWEN_TTS_AUDIO_SAMPLE_DIRS (none unless set), URLs only reach public addresses unless
QWEN_TTS_ALLOW_PRIVATE_URLS is on, and every source is size-capped.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

from ..settings import Settings
from .fetch import fetch_audio_url
from .reference import AudioSampleError

_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Real audio is kilobytes of base64; a shorter string that happens to use only base64
# characters (like "/srv/voices/ref") is taken as a path.
MIN_BASE64_CHARS = 256


def _b64decode(text: str, max_bytes: int) -> bytes:
    compact = re.sub(r"\s+", "", text)
    if len(compact) * 3 // 4 > max_bytes:
        raise AudioSampleError(f"audio_sample is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioSampleError("audio_sample is not valid base64") from exc


def _decode_data_uri(value: str, max_bytes: int) -> bytes:
    header, sep, payload = value.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise AudioSampleError("audio_sample data: URI must be base64-encoded (data:audio/...;base64,...)")
    return _b64decode(payload, max_bytes)


def _read_local(value: str, settings: Settings) -> bytes:
    if not settings.audio_sample_dirs:
        raise AudioSampleError(
            "audio_sample local paths are disabled; send the audio as base64 or a URL, "
            "or set QWEN_TTS_AUDIO_SAMPLE_DIRS to the directories the server may read"
        )
    # realpath follows symlinks, so a link inside an allowed directory cannot point out of it.
    target = Path(os.path.realpath(os.path.expanduser(value)))
    allowed = [Path(os.path.realpath(d)) for d in settings.audio_sample_dirs]
    if not any(target == root or root in target.parents for root in allowed):
        raise AudioSampleError("audio_sample path is outside the directories in QWEN_TTS_AUDIO_SAMPLE_DIRS")
    if not target.is_file():
        raise AudioSampleError("audio_sample path does not exist or is not a file")
    if target.stat().st_size > settings.audio_sample_max_bytes:
        raise AudioSampleError(f"audio_sample is larger than {settings.audio_sample_max_bytes} bytes")
    try:
        return target.read_bytes()
    except OSError as exc:
        raise AudioSampleError("audio_sample path could not be read") from exc


async def read_audio_sample(value: str, settings: Settings) -> bytes:
    text = value.strip()
    if not text:
        raise AudioSampleError("audio_sample is empty")
    max_bytes = settings.audio_sample_max_bytes
    if text[:5].lower() == "data:":
        return _decode_data_uri(text, max_bytes)
    if text[:7].lower() == "http://" or text[:8].lower() == "https://":
        return await fetch_audio_url(
            text,
            allow_private=settings.allow_private_urls,
            timeout=settings.url_timeout_seconds,
            max_bytes=max_bytes,
        )
    if _SCHEME.match(text):
        raise AudioSampleError("audio_sample URL must be http:// or https://")
    if len(text) >= MIN_BASE64_CHARS and _BASE64.match(text):
        return _b64decode(text, max_bytes)
    return _read_local(text, settings)
