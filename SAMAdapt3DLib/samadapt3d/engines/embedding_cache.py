"""Per-slice image embeddings for SliceEngine: an in-memory LRU bounded in bytes, an optional on-disk store
shared across processes, and a cancellable background prefetch that embeds outward from a slice.

Keys are what an embedding depends on: the slice's pixels (and, for a model that embeds a slice with its
neighbours, theirs), so a re-oriented or reloaded copy of the same scan reuses the embeddings. On disk the key
also holds the model's `embedding_identity()` (weights, precision, backend: see samadapt3d.runtime), so a
different model or precision never reads another's entries.

Compact entries: when the model's embeddings are not the exact fp32 ones (`EncoderRuntime.embeddings_exact`),
they are kept as float16 (2 MiB per LiteMedSAM slice instead of 4 MiB), so a 300-slice CT fits the default budget.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..byte_lru import ByteLRU
from ..errors import CancelledError
from ..families.base import SliceModel
from ..runtime import EncoderRuntime
from ..runtime.heap import trim_heap
from ..runtime.paths import CACHE_DIR_ENV, user_cache_dir  # noqa: F401  (CACHE_DIR_ENV: re-exported)

#: env var: "0"/"off" disables the on-disk embedding store
DISK_CACHE_ENV = "SAMADAPT3D_EMBEDDING_CACHE"
#: default in-memory budget: a 512x512x300 CT at float16 (300 x 2 MiB) fits
DEFAULT_MEMORY_BYTES = 1 << 30
#: default on-disk budget
DEFAULT_DISK_BYTES = 2 << 30
#: compact storage type of non-exact embeddings (more mantissa than bfloat16; LiteMedSAM's neck output is
#: LayerNorm-ed, well inside the float16 range)
COMPACT_DTYPE = torch.float16
#: slices per encoder call in the background prefetch on a GPU (on a CPU one: a click waits for one slice at most)
PREFETCH_BATCH_GPU = 16
_DISK_MAGIC = b"SA3DEMB1"


#: bytes of normalised slices kept (`SliceData.image01`): a step reads a few slices many times
RECENT_NORMALISED_BYTES = 32 << 20
_TOKENS = itertools.count()


class NormalisedSlices:
    """The slices of the current image normalised to [0, 1] (the model's `normalize_slice`), computed when read and
    the latest few kept, so that an embedding in memory does not also hold its slice as float32 (1 MiB per
    512 x 512 slice). The cache binds each SliceData it hands out to its place in the current image."""

    def __init__(self, normalize: Callable[[np.ndarray], np.ndarray], read_slice: Callable[[int, int], np.ndarray],
                 max_bytes: int = RECENT_NORMALISED_BYTES) -> None:
        """`read_slice(axis, index)`: the current image's slice as float32, as it is embedded."""
        self._normalize = normalize
        self._read_slice = read_slice
        self._where: dict[int, tuple[int, int]] = {}  # SliceData token -> (axis, index) in the current image
        self._recent: ByteLRU[np.ndarray] = ByteLRU(max_bytes)
        self._lock = threading.Lock()

    def new_image(self) -> None:
        """The image changed: every SliceData is bound again by the lookup that finds it there."""
        with self._lock:
            self._where.clear()
            self._recent.clear()

    def bind(self, data: "SliceData", axis: int, index: int) -> None:
        with self._lock:
            self._where[data.token] = (axis, index)

    def of(self, data: "SliceData") -> np.ndarray:
        """`data`'s slice normalised (float32, read-only)."""
        with self._lock:
            hit = self._recent.get(data.token)
            where = self._where.get(data.token)
        if hit is not None:
            return hit
        if where is None:
            raise RuntimeError("this slice is not in the current image: look it up in the cache again")
        out = np.asarray(self._normalize(self._read_slice(*where)), dtype=np.float32)
        out.setflags(write=False)
        with self._lock:
            self._recent.put(data.token, out, out.nbytes)
        return out


@dataclass(eq=False)
class SliceData:
    """One slice ready for decoding: its embedding (kept packed), the model transform, and its slice normalised
    to [0, 1] for the click scores (`image01`, computed from the image when read)."""

    packed: torch.Tensor  # [1, C, h, w], float32 or COMPACT_DTYPE
    transform: object
    normalised: NormalisedSlices
    nbytes: int = field(init=False)
    token: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = self.packed.numel() * self.packed.element_size()
        self.token = next(_TOKENS)

    @property
    def embedding(self) -> torch.Tensor:
        """Float32 embedding [1, C, h, w] for the decoder."""
        return self.packed if self.packed.dtype == torch.float32 else self.packed.float()

    @property
    def image01(self) -> np.ndarray:
        """The slice min-max normalised to [0, 1] (float32, read-only)."""
        return self.normalised.of(self)


class DiskEmbeddingStore:
    """Embeddings on disk, one file per key, bounded in bytes (least recently used files go first).

    Writes are atomic (temporary file + rename); an unreadable, truncated or foreign file reads as a miss and
    is removed. Safe to share between processes: the worst case of a race is one slice embedded twice."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = DEFAULT_DISK_BYTES) -> None:
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self._written = 0  # bytes written since the last prune

    @classmethod
    def default(cls) -> "DiskEmbeddingStore | None":
        """The store in the user's cache folder, or None when disabled by $SAMADAPT3D_EMBEDDING_CACHE."""
        if os.environ.get(DISK_CACHE_ENV, "").strip().lower() in ("0", "off", "no", "false"):
            return None
        return cls(user_cache_dir() / "embeddings")

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.emb"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        tensor = _decode_entry(raw)
        if tensor is None:
            try:
                path.unlink()
            except OSError:
                pass
            return None
        try:
            os.utime(path)  # recently used: pruned last
        except OSError:
            pass
        return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        path = self._path(key)
        data = _encode_entry(tensor)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            return  # a full or read-only disk costs speed, never a result
        self._written += len(data)
        if self._written > self.max_bytes // 16:
            self.prune()

    def prune(self) -> None:
        """Remove the least recently used entries until the folder fits `max_bytes`."""
        self._written = 0
        entries = []
        for path in self.folder.glob("*/*.emb"):
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
        total = sum(e[1] for e in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
                total -= size
            except OSError:
                pass


def _encode_entry(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().to("cpu").contiguous()
    dtype = {torch.float32: b"f4", torch.float16: b"f2"}[t.dtype]
    shape = np.asarray(t.shape, dtype="<i8")
    payload = t.numpy().tobytes()
    digest = hashlib.blake2b(payload, digest_size=16).digest()
    return _DISK_MAGIC + dtype + bytes([len(shape)]) + shape.tobytes() + digest + payload


def _decode_entry(raw: bytes) -> torch.Tensor | None:
    try:
        if raw[:8] != _DISK_MAGIC:
            return None
        dtype = {b"f4": np.float32, b"f2": np.float16}[raw[8:10]]
        ndim = raw[10]
        shape = np.frombuffer(raw, dtype="<i8", count=ndim, offset=11)
        start = 11 + 8 * ndim
        digest, payload = raw[start:start + 16], raw[start + 16:]
        if len(payload) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            return None
        if hashlib.blake2b(payload, digest_size=16).digest() != digest:
            return None
        return torch.from_numpy(np.frombuffer(payload, dtype=dtype).reshape(tuple(int(s) for s in shape)).copy())
    except (KeyError, IndexError, ValueError):
        return None


#: `disk=` default: the user's store (DiskEmbeddingStore.default()), opened when first needed
DEFAULT_DISK_STORE = "default"


class SliceEmbeddingCache:
    """The slices of the current image -> SliceData, through the memory LRU, then the disk store, then the
    model. Thread-safe: the background prefetch and the engine's calls share one lock, held per slice, so a
    click waits for at most one slice of prefetch work."""

    def __init__(self, model: SliceModel, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 disk: DiskEmbeddingStore | str | None = None, stats: dict | None = None) -> None:
        self.model = model
        self._disk = disk
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("embedded", 0)
        self.stats.setdefault("cache_hits", 0)
        self.stats.setdefault("disk_hits", 0)
        self.image: np.ndarray | None = None
        #: slice content key -> data; kept across set_image (the same scan re-oriented or reloaded)
        self._memory: ByteLRU[SliceData] = ByteLRU(memory_bytes)
        self._normalised = NormalisedSlices(model.normalize_slice, self.slice2d)
        self._keys: dict[tuple[int, int], tuple] = {}  # (axis, index) of this image -> content key
        self._lock = threading.RLock()
        self._prefetch: tuple[threading.Thread, threading.Event] | None = None

    @property
    def disk(self) -> DiskEmbeddingStore | None:
        """The on-disk store; used only for a model with an `embedding_identity` (see samadapt3d.runtime)."""
        if self._disk == DEFAULT_DISK_STORE:
            self._disk = DiskEmbeddingStore.default()
        return self._disk

    @property
    def memory_bytes(self) -> int:
        """The in-memory budget."""
        return self._memory.max_bytes

    @property
    def used_bytes(self) -> int:
        return self._memory.used_bytes

    def set_image(self, image: np.ndarray) -> None:
        self.stop_prefetch()
        with self._lock:
            self.image = image
            self._keys.clear()
            self._normalised.new_image()

    # ---- lookups ---------------------------------------------------------------------------------
    def get(self, axis: int, index: int, cancel: threading.Event | None = None) -> SliceData:
        with self._lock:
            key = self._keys.get((axis, index))
            slice2d = None
            if key is None:
                slice2d = self.slice2d(axis, index)
                key = self.content_key(axis, index, slice2d)
                self._keys[(axis, index)] = key
            hit = self._memory.get(key)
            if hit is not None:
                self.stats["cache_hits"] += 1
                self._normalised.bind(hit, axis, index)
                return hit
            if cancel is not None and cancel.is_set():
                raise CancelledError("segmentation cancelled")
            if slice2d is None:
                slice2d = self.slice2d(axis, index)
            data = self._load_or_embed(axis, index, key, slice2d)
            self._normalised.bind(data, axis, index)
            self._remember(key, data)
            return data

    def slice2d(self, axis: int, index: int) -> np.ndarray:
        """Slice `index` along `axis` as float32 (the image may hold small integers: the same values)."""
        return np.ascontiguousarray(np.take(self.image, index, axis=axis), dtype=np.float32)

    def _remember(self, key: tuple, data: SliceData) -> None:
        self._memory.put(key, data, data.nbytes)

    def content_key(self, axis: int, index: int, slice2d: np.ndarray) -> tuple:
        """What a slice's embedding depends on: its pixels, and for a model that embeds a slice with its
        neighbours (`slice_context`, 3D adapters) the neighbours too, in order."""
        context = self.model.slice_context
        digest = hashlib.blake2b(digest_size=16)
        lo, hi = max(index - context, 0), min(index + context, self.image.shape[axis] - 1)
        for k in range(lo, hi + 1):
            digest.update(slice2d.tobytes() if k == index
                          else self.slice2d(axis, k).tobytes())
        return (slice2d.shape, index - lo, hi - lo, digest.digest())

    def _embeds_in_volume(self) -> bool:
        """A model that embeds a slice with its neighbours (3D adapters: `slice_context` > 0)."""
        return self.model.slice_context > 0

    def _identity(self) -> str | None:
        if not isinstance(self.model, EncoderRuntime) or self.disk is None:
            return None
        return self.model.embedding_identity()

    def _compact(self) -> bool:
        return isinstance(self.model, EncoderRuntime) and not self.model.embeddings_exact()

    def _disk_key(self, identity: str, key: tuple) -> str:
        text = repr((identity, key[0], key[1], key[2])).encode() + key[3]
        return hashlib.blake2b(text, digest_size=20).hexdigest()

    def _load_or_embed(self, axis: int, index: int, key: tuple, slice2d: np.ndarray) -> SliceData:
        model = self.model
        tensor, transform = model.preprocess_slice(slice2d)
        identity = self._identity()
        disk_key = None if identity is None else self._disk_key(identity, key)
        packed = self.disk.get(disk_key) if disk_key is not None else None
        if packed is not None:
            self.stats["disk_hits"] += 1
            return SliceData(packed.to(model.device), transform, self._normalised)
        with torch.no_grad():
            if self._embeds_in_volume():
                embedding = model.embed_in_volume(self.image, axis, index).detach()
            else:
                embedding = model.embed(tensor[None]).detach()
        data = self._pack(embedding, transform)
        self.stats["embedded"] += 1
        if disk_key is not None:
            self.disk.put(disk_key, data.packed)
        return data

    def _pack(self, embedding: torch.Tensor, transform: object) -> SliceData:
        packed = embedding.to(COMPACT_DTYPE) if self._compact() else embedding.float()
        return SliceData(packed.contiguous(), transform, self._normalised)

    def get_many(self, axis: int, indices: list[int], cancel: threading.Event | None = None) -> list[SliceData]:
        """Like `get` for several slices; the ones to embed go through the encoder as one batch (GPU
        throughput). Models that embed with neighbours go one by one."""
        if self._embeds_in_volume() or len(indices) <= 1:
            return [self.get(axis, k, cancel) for k in indices]
        with self._lock:
            out: dict[int, SliceData] = {}
            todo = []
            for k in indices:
                key = self._keys.get((axis, k))
                if key is None:
                    slice2d = self.slice2d(axis, k)
                    key = self._keys[(axis, k)] = self.content_key(axis, k, slice2d)
                if key in self._memory:
                    out[k] = self.get(axis, k, cancel)
                    continue
                identity = self._identity()
                if identity is not None and self.disk.get(self._disk_key(identity, key)) is not None:
                    out[k] = self.get(axis, k, cancel)  # on disk: read, not embedded
                    continue
                todo.append((k, key))
            if todo:
                if cancel is not None and cancel.is_set():
                    raise CancelledError("segmentation cancelled")
                slices = [self.slice2d(axis, k) for k, _ in todo]
                prepared = [self.model.preprocess_slice(s2d) for s2d in slices]
                with torch.no_grad():
                    batch = self.model.embed(torch.stack([t for t, _ in prepared])).detach()
                identity = self._identity()
                for n, (k, key) in enumerate(todo):
                    data = self._pack(batch[n:n + 1], prepared[n][1])
                    self._normalised.bind(data, axis, k)
                    self.stats["embedded"] += 1
                    if identity is not None:
                        self.disk.put(self._disk_key(identity, key), data.packed)
                    self._remember(key, data)
                    out[k] = data
            return [out[k] for k in indices]

    def cached(self, axis: int, index: int) -> bool:
        with self._lock:
            key = self._keys.get((axis, index))
            return key is not None and key in self._memory

    # ---- background prefetch -------------------------------------------------------------------
    def prefetch(self, axis: int, centre: int, on_done: Callable[[int], None] | None = None,
                 batch: int | None = None) -> threading.Event:
        """Embed every slice along `axis` in the background, outward from `centre` (centre, +1, -1, +2, ...),
        replacing any prefetch running; it stops when the memory budget is full (going on would evict the slices
        nearest the centre, embedded first). Returns its cancel event; `stop_prefetch` cancels and joins it."""
        self.stop_prefetch()
        cancel = threading.Event()
        count = self.image.shape[axis]
        order = list(outward_order(centre, count))
        step = batch or (PREFETCH_BATCH_GPU if self.model.device.type == "cuda" else 1)

        def work() -> None:
            done = 0
            if isinstance(self.model, EncoderRuntime) and not cancel.is_set():
                with self._lock:  # the engine's calls wait for it, as for one slice
                    self.model.warm_backends()
            try:
                for start in range(0, len(order), step):
                    if cancel.is_set():
                        return  # a click: it embeds what it needs next
                    if self._full(axis, order[start:start + step]):
                        self.release_backend_memory()
                        return
                    self.get_many(axis, order[start:start + step], cancel)
                    done += len(order[start:start + step])
            except CancelledError:
                return
            self.release_backend_memory()
            if on_done is not None:
                on_done(done)

        thread = threading.Thread(target=work, name="samadapt3d-prefetch", daemon=True)
        self._prefetch = (thread, cancel)
        thread.start()
        return cancel

    def release_backend_memory(self) -> None:
        """Nothing left to embed for now: the encoder backend gives its working memory back, and the heap's freed
        pages go back to the OS (between clicks the process then holds ~300 MiB less; docs/BENCHMARKS.md,
        "Session 11")."""
        if isinstance(self.model, EncoderRuntime):
            with self._lock:  # not during an embedding
                self.model.release_memory()
                trim_heap()

    def _full(self, axis: int, indices: list[int]) -> bool:
        """Embedding `indices` would push an entry out of memory (sized like the last entry stored)."""
        with self._lock:
            missing = sum(not self.cached(axis, k) for k in indices)
            if not missing or not self._memory:
                return False
            entry = self._memory.newest().nbytes
            return self._memory.used_bytes + missing * entry > self.memory_bytes

    def stop_prefetch(self) -> None:
        running = self._prefetch
        self._prefetch = None
        if running is not None:
            running[1].set()
            running[0].join()

    def prefetching(self) -> bool:
        return self._prefetch is not None and self._prefetch[0].is_alive()


def outward_order(centre: int, count: int) -> Iterable[int]:
    """centre, centre+1, centre-1, centre+2, ... within [0, count)."""
    centre = min(max(int(centre), 0), count - 1)
    yield centre
    for d in range(1, count):
        for k in (centre + d, centre - d):
            if 0 <= k < count:
                yield k
