"""A model on a CPU in the least memory that gives the same numbers.

The published checkpoints store the talker in bfloat16. Loading them in float32 (what a CPU
computes in) first built a float32 copy of every weight, twice the checkpoint, and kept the
311 M-parameter text embedding that way, though a prompt reads a few of its rows. Here:

- the talker is loaded as stored (bfloat16); its linears are quantised from that (the same
  int8 as from a float32 copy: bfloat16 widens to float32 exactly) or widened, one weight at
  a time; the rest is widened to the model's dtype, exactly;
- the embedding tables (the text embedding's 311 M parameters above all) are read from the
  checkpoint file through a memory map, as stored: only the rows prompts and codes use are
  ever read into memory, and a lookup widens them exactly;
- the codec is loaded after that, in the dtype asked for (the package loads it with the
  talker's dtype, in the middle of loading the talker), and its encoder, which only cloning
  uses, is dropped from models that do not clone;
- what loading freed is handed back to the system (glibc keeps freed memory otherwise).

docs/BENCHMARKS.md ("A laptop-sized server") has what each step saves.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .quantize import Int8Linear, Int8Part, Release

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _header(file: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header and where its data starts."""
    with file.open("rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        return json.loads(stream.read(length)), 8 + length


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()
        return [directory / name for name in sorted(set(names))]
    return [directory / "model.safetensors"]


@dataclass
class StoredWeights:
    """What a checkpoint directory's safetensors hold: each talker tensor's stored dtype, and
    where its embedding tables lie (file, start, end, shape, dtype by name)."""

    talker_dtypes: set[str] = field(default_factory=set)
    tables: dict[str, tuple[Path, int, int, list[int], str]] = field(default_factory=dict)

    @classmethod
    def of(cls, directory: Path) -> StoredWeights:
        stored = cls()
        try:
            for file in _weight_files(directory):
                header, data_start = _header(file)
                for name, entry in header.items():
                    if not name.startswith("talker.") or not isinstance(entry, dict):
                        continue
                    stored.talker_dtypes.add(entry["dtype"])
                    if "embedding" in name and name.endswith(".weight"):
                        start, end = entry["data_offsets"]
                        stored.tables[name] = (
                            file,
                            data_start + start,
                            data_start + end,
                            entry["shape"],
                            entry["dtype"],
                        )
        except (OSError, ValueError, KeyError, struct.error) as exc:
            log.warning("could not read the weights' header in %s (%s); loading them as a whole", directory, exc)
            return cls()
        return stored

    @property
    def bfloat16(self) -> bool:
        return self.talker_dtypes == {"BF16"}

    def mapped(self, name: str) -> torch.Tensor | None:
        """The table ``name`` as stored, read through a private memory map of its file."""
        if name not in self.tables:
            return None
        file, start, end, shape, dtype = self.tables[name]
        with file.open("rb") as stream:
            mapping = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY)  # pages read on use, never written
        torch_dtype = SAFETENSORS_DTYPES[dtype]
        count = (end - start) // torch_dtype.itemsize
        return torch.frombuffer(mapping, dtype=torch_dtype, count=count, offset=start).view(shape)


class StoredEmbedding(torch.nn.Module):
    """An embedding whose table stays as stored (memory-mapped): a lookup widens the rows it
    reads to ``dtype``. The table is not a parameter, so ``.to()`` and the model's dtype leave it be."""

    def __init__(self, table: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.table = table
        self.num_embeddings, self.embedding_dim = table.shape
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table).to(self.dtype)


def widen(model: torch.nn.Module, dtype: torch.dtype, release: Release | None = None) -> None:
    """Every floating parameter and buffer of ``model`` in ``dtype`` (int8 layers and stored
    embeddings as they are), one tensor at a time (each ``release``d once widened)."""
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int8Part, StoredEmbedding)):
            continue
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_floating_point() and param.dtype != dtype:
                setattr(module, name, torch.nn.Parameter(param.detach().to(dtype), requires_grad=False))
                if release is not None:
                    release(param)
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_floating_point() and buffer.dtype != dtype:
                setattr(module, name, buffer.to(dtype))


def map_embeddings(talker: Any, stored: StoredWeights, dtype: torch.dtype, release: Release | None = None) -> int:
    """Put the talker's embedding tables (text, codec, the code predictor's) back on the
    checkpoint file (``StoredEmbedding``); returns how many."""
    mapped = 0
    for name, module in list(talker.named_modules()):
        if type(module) is not torch.nn.Embedding:
            continue
        table = stored.mapped(f"talker.{name}.weight")
        if table is None or tuple(table.shape) != tuple(module.weight.shape):
            continue
        owner_name, _, attribute = name.rpartition(".")
        owner = talker.get_submodule(owner_name) if owner_name else talker
        setattr(owner, attribute, StoredEmbedding(table, dtype))
        if release is not None:
            release(module.weight)
        mapped += 1
    return mapped


M_MMAP_THRESHOLD = -3  # mallopt's parameter
LARGE_BLOCK = 8 << 20


def return_large_blocks() -> None:
    """Blocks of 8 MiB and more (the codec's activations at 24 kHz above all) come from
    their own mappings and go back to the system when freed. glibc otherwise raises that
    threshold as such blocks are freed and then keeps them in each thread's heap, so a burst
    of requests left hundreds of MB resident after it (docs/BENCHMARKS.md)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)


def release_freed_memory() -> None:
    """Hand what Python and the allocator hold free back to the system (glibc's
    ``malloc_trim``; elsewhere only a collection)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class DeferredCodec:
    """Stands in for the package's codec loader while the talker loads, keeping what it was
    asked; ``load`` then loads the codec in the dtype given."""

    def __init__(self, loader: Any):
        self._loader = loader
        self._asked: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def from_pretrained(self, *args: Any, **kwargs: Any) -> None:
        self._asked = (args, kwargs)

    def load(self, model: Any, dtype: torch.dtype) -> None:
        assert self._asked is not None, "the package did not ask for its codec"
        args, kwargs = self._asked
        model.load_speech_tokenizer(self._loader.from_pretrained(*args, **{**kwargs, "dtype": dtype}))


@contextlib.contextmanager
def codec_deferred() -> Iterator[DeferredCodec | None]:
    """While the package loads a model, its codec is not loaded (None: this version of the
    package cannot be asked so, and loads it as it does)."""
    from qwen_tts.core.models import modeling_qwen3_tts as package

    loader = getattr(package, "Qwen3TTSTokenizer", None)
    if loader is None or not hasattr(loader, "from_pretrained"):
        yield None
        return
    deferred = DeferredCodec(loader)
    package.Qwen3TTSTokenizer = deferred
    try:
        yield deferred
    finally:
        package.Qwen3TTSTokenizer = loader


def drop_codec_encoder(model: Any) -> bool:
    """Free the codec's encoder (reference audio to codes: cloning only)."""
    codec = model.speech_tokenizer.model
    if not isinstance(getattr(codec, "encoder", None), torch.nn.Module):
        return False
    codec.encoder = None
    return True


MADV_DONTNEED = 4


class MappedFiles:
    """The private file mappings of this process (``/proc/self/maps``) whose files' names end
    with ``suffix``: where transformers left a checkpoint's tensors mapped from disk."""

    def __init__(self, suffix: str = ".safetensors"):
        self.ranges: list[tuple[int, int]] = []
        try:
            lines = Path("/proc/self/maps").read_text().splitlines()
        except OSError:
            return
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[1].endswith("p") and fields[5].strip().endswith(suffix):
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                self.ranges.append((start, end))

    def release(self, tensor: torch.Tensor) -> None:
        """Drop the pages wholly inside ``tensor`` from this process's memory when they are a
        mapped file's (read again from the file if ever touched; private file pages that were
        never written hold nothing else): a weight just quantised or widened need not stay
        resident until its whole checkpoint is unmapped."""
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        if not any(low <= start and end <= high for low, high in self.ranges):
            return
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, end // page * page
        if last > first:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED)
