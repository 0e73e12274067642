"""Every environment variable the server reads, in one typed place.

Names without a prefix (``CUSTOMVOICE_MODEL_PATH``, ``HOST``...) are the ones the
specification fixed; everything we added is prefixed ``QWEN_TTS_``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .constants import ModelKind

MiB = 1024 * 1024


def default_data_dir() -> Path:
    """Where saved voices live unless QWEN_TTS_DATA_DIR says otherwise (XDG convention)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "qwen-tts-api"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    # --- models (specification) ---
    # A model directory or a Hugging Face Hub repo id (engine/models/source.py).
    customvoice_model_path: str | None = Field(default=None, validation_alias=AliasChoices("CUSTOMVOICE_MODEL_PATH"))
    base_model_path: str | None = Field(default=None, validation_alias=AliasChoices("BASE_MODEL_PATH"))
    # Ours: the third family, voices designed from a description (never served by default).
    voicedesign_model_path: str | None = Field(default=None, validation_alias=AliasChoices("VOICEDESIGN_MODEL_PATH"))
    # Ours: the forced aligner that times each spoken word (a directory or a Hub id, e.g.
    # Qwen/Qwen3-ForcedAligner-0.6B); unset: word timings are estimated (api/word_timings.py).
    aligner_model_path: str | None = Field(default=None, validation_alias=AliasChoices("ALIGNER_MODEL_PATH"))
    device: str = Field(default="auto", validation_alias=AliasChoices("QWEN_TTS_DEVICE"))
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", validation_alias=AliasChoices("QWEN_TTS_DTYPE")
    )
    # The codec (speech tokenizer): auto = the model's dtype on CUDA; on a CPU bfloat16 where the
    # processor multiplies bfloat16 natively (AMX) and its convolutions measure at least twice
    # as fast so, else float32 (engine/models/precision.py).
    codec_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto", validation_alias=AliasChoices("QWEN_TTS_CODEC_DTYPE")
    )
    # int8: weights and (per row) activations in int8 (fbgemm); int8-weight-only: int8 weights,
    # bfloat16 activations (engine/models/quantize.py).
    quantize: Literal["none", "int8", "int8-weight-only"] = Field(
        default="none", validation_alias=AliasChoices("QWEN_TTS_QUANTIZE")
    )
    # fast: on a CPU, int8 weights and the compiled step unless QWEN_TTS_QUANTIZE or
    # QWEN_TTS_COMPILE say otherwise (engine/models/loading.py, with_profile).
    profile: Literal["standard", "fast"] = Field(default="standard", validation_alias=AliasChoices("QWEN_TTS_PROFILE"))
    attn: str = Field(default="flash_attention_2", validation_alias=AliasChoices("QWEN_TTS_ATTN"))
    # The talker step and code predictor as torch.compile graphs (engine/generation/compiled.py):
    # auto = on CUDA only (on a CPU it is compiled slowly and gains little, see BENCHMARKS).
    compile: Literal["auto", "on", "off"] = Field(default="auto", validation_alias=AliasChoices("QWEN_TTS_COMPILE"))
    # With the compiled step on CUDA, replay it as CUDA graphs (torch.compile's "reduce-overhead").
    cuda_graphs: Literal["auto", "off"] = Field(default="auto", validation_alias=AliasChoices("QWEN_TTS_CUDA_GRAPHS"))
    # Codec decoding on a thread of its own, beside the steps (engine/runtime/audio_worker.py):
    # auto = unless every model is on a CPU with one thread.
    decode_thread: Literal["auto", "on", "off"] = Field(
        default="auto", validation_alias=AliasChoices("QWEN_TTS_DECODE_THREAD")
    )
    # Streams' chunks decoded in one codec call (generation/streaming_decoder.py, decodes_together):
    # auto = on a GPU, and on a CPU where a probe finds it exact to the bit.
    decode_together: Literal["auto", "on", "off"] = Field(
        default="auto", validation_alias=AliasChoices("QWEN_TTS_DECODE_TOGETHER")
    )

    # --- network (specification) ---
    host: str = Field(default="0.0.0.0", validation_alias=AliasChoices("HOST"))
    port: int = Field(default=8000, ge=1, le=65535, validation_alias=AliasChoices("PORT"))

    # --- reference audio safety (ours) ---
    audio_sample_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("QWEN_TTS_AUDIO_SAMPLE_DIRS")
    )
    allow_private_urls: bool = Field(default=False, validation_alias=AliasChoices("QWEN_TTS_ALLOW_PRIVATE_URLS"))
    audio_sample_max_bytes: int = Field(
        default=10 * MiB, gt=0, validation_alias=AliasChoices("QWEN_TTS_AUDIO_SAMPLE_MAX_BYTES")
    )
    audio_sample_max_seconds: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("QWEN_TTS_AUDIO_SAMPLE_MAX_SECONDS")
    )
    url_timeout_seconds: float = Field(default=10.0, gt=0, validation_alias=AliasChoices("QWEN_TTS_URL_TIMEOUT"))

    # --- streaming (ours) ---
    stream_first_frames: int = Field(
        default=1, ge=1, le=50, validation_alias=AliasChoices("QWEN_TTS_STREAM_FIRST_FRAMES")
    )
    stream_max_chunk_frames: int = Field(
        default=48, ge=1, le=300, validation_alias=AliasChoices("QWEN_TTS_STREAM_MAX_CHUNK_FRAMES")
    )

    # --- admission control (ours) ---
    # Requests per model's batch: a number, or auto (engine/runtime/capacity.py: 8 on a CPU,
    # what free GPU memory holds up to 64 on a GPU).
    max_batch: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        default="auto", validation_alias=AliasChoices("QWEN_TTS_MAX_BATCH")
    )
    max_queue: int = Field(default=16, ge=0, le=10000, validation_alias=AliasChoices("QWEN_TTS_MAX_QUEUE"))
    # Chunked prefill: prompts longer than this many positions are prefilled in chunks of it,
    # one per step while other rows are speaking; 0 prefills them whole.
    prefill_chunk: int = Field(default=256, ge=0, le=1_000_000, validation_alias=AliasChoices("QWEN_TTS_PREFILL_CHUNK"))
    request_timeout_seconds: float = Field(
        default=300.0, gt=0, validation_alias=AliasChoices("QWEN_TTS_REQUEST_TIMEOUT")
    )

    # --- text streamed in over a WebSocket (ours; the defaults are vLLM-Omni's) ---
    ws_config_timeout_seconds: float = Field(
        default=10.0, gt=0, validation_alias=AliasChoices("QWEN_TTS_WS_CONFIG_TIMEOUT")
    )
    ws_idle_timeout_seconds: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("QWEN_TTS_WS_IDLE_TIMEOUT")
    )

    # --- what one client may hold (ours; api/limits.py) ---
    # A JSON (or plain form) body: refused with a 413 from Content-Length, or as it arrives.
    # Multipart voice uploads have their own limit: QWEN_TTS_AUDIO_SAMPLE_MAX_BYTES.
    max_body_bytes: int = Field(default=1 * MiB, ge=1024, validation_alias=AliasChoices("QWEN_TTS_MAX_BODY_BYTES"))
    # One WebSocket message (a session.config with ref_audio is the largest a client sends).
    ws_max_message_bytes: int = Field(
        default=1 * MiB, ge=1024, validation_alias=AliasChoices("QWEN_TTS_WS_MAX_MESSAGE_BYTES")
    )
    # Open /v1/audio/speech/stream sockets, all clients together; past it the handshake gets a 429.
    ws_max_sessions: int = Field(
        default=128, ge=1, le=100_000, validation_alias=AliasChoices("QWEN_TTS_WS_MAX_SESSIONS")
    )
    # Seconds one write to a client (a chunk of audio, a WebSocket message) may wait for the
    # client to read; past it the response is abandoned and its generation stopped (nginx's
    # send_timeout, with its default).
    send_timeout_seconds: float = Field(default=60.0, gt=0, validation_alias=AliasChoices("QWEN_TTS_SEND_TIMEOUT"))

    # --- saved voices and clone prompts (ours) ---
    data_dir: Path = Field(default_factory=default_data_dir, validation_alias=AliasChoices("QWEN_TTS_DATA_DIR"))
    prompt_cache_size: int = Field(
        default=32, ge=0, le=10000, validation_alias=AliasChoices("QWEN_TTS_PROMPT_CACHE_SIZE")
    )

    # --- running as a service (ours) ---
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("QWEN_TTS_API_KEYS")
    )
    # Keys that are accepted like QWEN_TTS_API_KEYS and see (use, delete) every saved voice.
    admin_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("QWEN_TTS_ADMIN_API_KEYS")
    )
    # With keys: voices saved before voices had owners (or while keys were off) are seen by
    # admin keys only, unless this shares them with every key.
    share_unowned_voices: bool = Field(default=False, validation_alias=AliasChoices("QWEN_TTS_SHARE_UNOWNED_VOICES"))
    shutdown_timeout_seconds: float = Field(
        default=30.0, ge=0, validation_alias=AliasChoices("QWEN_TTS_SHUTDOWN_TIMEOUT")
    )
    log_input: bool = Field(default=False, validation_alias=AliasChoices("QWEN_TTS_LOG_INPUT"))
    # Numbers, dates, money and units written out in the request's language (text/normalize.py),
    # unless a request says `normalize: false`.
    normalize: bool = Field(default=True, validation_alias=AliasChoices("QWEN_TTS_NORMALIZE"))

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # One or several keys separated by commas; blanks ignored.
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator(
        "customvoice_model_path", "base_model_path", "voicedesign_model_path", "aligner_model_path", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return str(value) if isinstance(value, Path) else value

    @field_validator("audio_sample_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        # One or several directories, separated by commas or the OS path separator.
        if isinstance(value, str):
            parts = re.split(f"[,{re.escape(os.pathsep)}]", value)
            return [p.strip() for p in parts if p.strip()]
        return value

    @property
    def keys_required(self) -> bool:
        """Whether /v1 needs a key (any key configured, admin or not)."""
        return bool(self.api_keys or self.admin_api_keys)

    @property
    def voices_dir(self) -> Path:
        return self.data_dir / "voices"

    @property
    def compile_cache_dir(self) -> Path:
        """Where compiled graphs are kept, so that a restart does not compile them again."""
        return self.data_dir / "compile-cache"

    @property
    def attn_implementation(self) -> str | None:
        """``None`` lets transformers pick its default attention (an empty QWEN_TTS_ATTN)."""
        return self.attn.strip() or None

    def model_paths(self) -> dict[ModelKind, str]:
        """The configured models (directories or Hub ids), keyed by kind."""
        paths = {
            ModelKind.CUSTOMVOICE: self.customvoice_model_path,
            ModelKind.BASE: self.base_model_path,
            ModelKind.VOICEDESIGN: self.voicedesign_model_path,
        }
        return {kind: path for kind, path in paths.items() if path is not None}
