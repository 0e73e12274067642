"""Saved custom voices: clone prompts computed once at upload, kept as files.

Each voice is one ``voice_<hex>.safetensors`` file in the voices directory: the speaker
embedding, the reference codes (in-context cloning only) and the metadata (name, time,
transcript, and a designed voice's description) in the safetensors header. safetensors
holds plain tensors, so loading a file cannot run code. Writes go to a temporary file in
the same directory, are synced, then renamed into place: a crash leaves either the whole
voice or none. A file that cannot be read is logged and skipped.

The directory is the source of truth: every lookup rescans it (a directory listing, plus
reading files that are new or changed), so replicas sharing the directory see each other's
uploads and deletions.

With API keys, a voice belongs to the key that saved it: its file records the key's digest
(``owner``, never the key), and every query is made for a ``Viewer`` that sees its own
voices, and all of them for an admin key. Names are unique among the voices a viewer sees,
so two keys may each have a "Narrator" and neither learns of the other's.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .prompt import ClonePrompt
from .speakers import is_builtin_voice

log = logging.getLogger(__name__)

FORMAT = "qwen-tts-api.voice.v1"
ID_PREFIX = "voice_"
_FILE = re.compile(r"^(voice_[0-9a-f]{24})\.safetensors$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")


class VoiceNameError(ValueError):
    """The name is malformed, reserved, or taken (``taken`` tells which)."""

    def __init__(self, message: str, taken: bool = False):
        super().__init__(message)
        self.taken = taken


@dataclass(frozen=True)
class SavedVoice:
    id: str
    name: str
    created_at: int
    prompt: ClonePrompt
    consent: str | None = None
    description: str | None = None  # designed voices: what VoiceDesign was asked for
    owner: str | None = None  # digest of the API key that saved it; None: saved without keys


@dataclass(frozen=True)
class Viewer:
    """Whose saved voices a caller sees: without keys (the default) every voice; with keys,
    those its own key saved (``owner``), the unowned ones where they are shared, or every
    voice for an admin key."""

    owner: str | None = None  # the caller's key digest, recorded on the voices it saves
    sees_all: bool = True
    sees_unowned: bool = True

    def sees(self, voice: SavedVoice) -> bool:
        if self.sees_all:
            return True
        if voice.owner is None:
            return self.sees_unowned
        return voice.owner == self.owner


EVERYONE = Viewer()  # no API keys: one shared set of voices
NOBODY = Viewer(sees_all=False, sees_unowned=False)  # a caller no key vouched for


def check_name(name: str) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise VoiceNameError(
            "a voice name is 1-64 characters: letters, digits, spaces, '-', '_' and '.', "
            "starting with a letter or digit"
        )
    if is_builtin_voice(name):
        raise VoiceNameError(f"{name!r} is a built-in voice; choose another name")
    if name.lower().startswith(ID_PREFIX):
        raise VoiceNameError(f"names starting with {ID_PREFIX!r} are reserved for voice ids")
    return name


class VoiceStore:
    def __init__(self, directory: Path):
        self.directory = directory
        self._lock = threading.RLock()
        self._voices: dict[str, SavedVoice] = {}
        self._seen: dict[str, tuple[int, int]] = {}  # file name -> (mtime_ns, size) when read
        self._skipped: set[tuple[str, int, int]] = set()  # unreadable files, reported once
        self.refresh()

    def seen_by(self, viewer: Viewer) -> CallerVoices:
        """The voices ``viewer`` sees, and saves as its own."""
        return CallerVoices(self, viewer)

    # --- queries (each rescans the directory first) ---
    def _visible(self, viewer: Viewer) -> dict[str, SavedVoice]:
        """The voices ``viewer`` sees, after one rescan (call with the lock held)."""
        self.refresh()
        return {voice_id: voice for voice_id, voice in self._voices.items() if viewer.sees(voice)}

    def list(self, viewer: Viewer) -> list[SavedVoice]:
        with self._lock:
            return sorted(self._visible(viewer).values(), key=lambda v: (v.created_at, v.id))

    def get(self, voice_id: str, viewer: Viewer) -> SavedVoice | None:
        with self._lock:
            return self._visible(viewer).get(voice_id)

    def find(self, id_or_name: str, viewer: Viewer) -> SavedVoice | None:
        """A saved voice by id, or by name in any case (an admin seeing several voices of one
        name gets its own first, then the oldest)."""
        key = id_or_name.strip()
        with self._lock:
            seen = self._visible(viewer)
        if key in seen:
            return seen[key]
        named = sorted((v for v in seen.values() if v.name.lower() == key.lower()), key=lambda v: (v.created_at, v.id))
        return min(named, key=lambda v: v.owner != viewer.owner or viewer.owner is None, default=None)

    def unowned(self) -> int:
        """How many saved voices have no owner (saved without keys, or before voices had owners)."""
        return sum(voice.owner is None for voice in self.list(EVERYONE))

    # --- changes ---
    def check_new_name(self, name: str, viewer: Viewer) -> str:
        """The name, cleaned, if a new voice of ``viewer``'s may take it; else VoiceNameError."""
        name = check_name(name)
        if self.find(name, viewer) is not None:
            raise VoiceNameError(f"a voice named {name!r} already exists", taken=True)
        return name

    def add(
        self,
        name: str,
        prompt: ClonePrompt,
        viewer: Viewer,
        consent: str | None = None,
        description: str | None = None,
    ) -> SavedVoice:
        with self._lock:
            name = self.check_new_name(name, viewer)
            voice = SavedVoice(
                id=ID_PREFIX + secrets.token_hex(12),
                name=name,
                created_at=int(time.time()),
                prompt=prompt,
                consent=consent,
                description=description,
                owner=viewer.owner,
            )
            self._write(voice)
            self._voices[voice.id] = voice
            return voice

    def delete(self, voice_id: str, viewer: Viewer) -> bool:
        with self._lock:
            if voice_id not in self._visible(viewer):
                return False
            self._path(voice_id).unlink(missing_ok=True)
            del self._voices[voice_id]
            self._seen.pop(self._path(voice_id).name, None)
            return True

    # --- files ---
    def _path(self, voice_id: str) -> Path:
        return self.directory / f"{voice_id}.safetensors"

    def _write(self, voice: SavedVoice) -> None:
        tensors = {"speaker_embedding": voice.prompt.speaker_embedding.detach().float().cpu().contiguous()}
        if voice.prompt.reference_codes is not None:
            tensors["reference_codes"] = voice.prompt.reference_codes.detach().long().cpu().contiguous()
        metadata = {"format": FORMAT, "id": voice.id, "name": voice.name, "created_at": str(voice.created_at)}
        if voice.prompt.reference_text is not None:
            metadata["reference_text"] = voice.prompt.reference_text
        if voice.consent:
            metadata["consent"] = voice.consent
        if voice.description:
            metadata["description"] = voice.description
        if voice.owner:
            metadata["owner"] = voice.owner
        data = safetensors_bytes(tensors, metadata=metadata)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".upload-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self._path(voice.id))
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _sync_directory(self.directory)
        stat = self._path(voice.id).stat()
        self._seen[self._path(voice.id).name] = (stat.st_mtime_ns, stat.st_size)

    def refresh(self) -> None:
        """Bring the in-memory voices in line with the directory (call with the lock held,
        or before the store is shared)."""
        try:
            entries = {entry.name: entry for entry in os.scandir(self.directory) if _FILE.match(entry.name)}
        except FileNotFoundError:
            entries = {}
        for gone in [name for name in self._seen if name not in entries]:
            del self._seen[gone]
            self._voices.pop(_voice_id(gone), None)
        for name, entry in entries.items():
            stat = entry.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._seen.get(name) == stamp or (name, *stamp) in self._skipped:
                continue
            try:
                voice = _read(Path(entry.path), _voice_id(name))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, never fatal
                log.warning("skipping unreadable saved voice %s: %s", entry.path, exc)
                self._skipped.add((name, *stamp))
                continue
            self._seen[name] = stamp
            self._voices[voice.id] = voice


class CallerVoices:
    """The saved voices one caller sees (``VoiceStore`` queries bound to its ``Viewer``): what
    the routes are handed, so no route can forget whose voices it is looking at."""

    def __init__(self, store: VoiceStore, viewer: Viewer):
        self.store, self.viewer = store, viewer

    def list(self) -> list[SavedVoice]:
        return self.store.list(self.viewer)

    def get(self, voice_id: str) -> SavedVoice | None:
        return self.store.get(voice_id, self.viewer)

    def find(self, id_or_name: str) -> SavedVoice | None:
        return self.store.find(id_or_name, self.viewer)

    def check_new_name(self, name: str) -> str:
        return self.store.check_new_name(name, self.viewer)

    def add(
        self, name: str, prompt: ClonePrompt, consent: str | None = None, description: str | None = None
    ) -> SavedVoice:
        return self.store.add(name, prompt, self.viewer, consent, description)

    def delete(self, voice_id: str) -> bool:
        return self.store.delete(voice_id, self.viewer)


def _voice_id(file_name: str) -> str:
    """The voice id a saved voice's file name holds (the name matched ``_FILE``)."""
    found = _FILE.match(file_name)
    assert found is not None
    return found.group(1)


def _read(path: Path, voice_id: str) -> SavedVoice:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("id") != voice_id:
            raise ValueError(f"not a {FORMAT} file for {voice_id}")
        keys = set(f.keys())
        embedding = f.get_tensor("speaker_embedding")
        codes = f.get_tensor("reference_codes") if "reference_codes" in keys else None
    if embedding.dim() != 1 or (codes is not None and codes.dim() != 2):
        raise ValueError("unexpected tensor shapes")
    prompt = ClonePrompt(speaker_embedding=embedding, reference_codes=codes, reference_text=meta.get("reference_text"))
    return SavedVoice(
        id=voice_id,
        name=meta["name"],
        created_at=int(meta["created_at"]),
        prompt=prompt,
        consent=meta.get("consent"),
        description=meta.get("description"),
        owner=meta.get("owner"),
    )


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
