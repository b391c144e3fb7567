"""What `samadapt3d serve` holds: uploaded images (content-addressed, LRU), loaded models, and sessions (one
InteractiveSession each, owned by one client, expiring when idle, LRU-bounded in number)."""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..byte_lru import ByteLRU
from ..client.wire import mask_delta
from ..errors import SAMAdapt3DError
from ..session import InteractiveSession

#: default --max-voxels: 512 x 512 x 1024
DEFAULT_MAX_VOXELS = 512 * 512 * 1024
#: uploaded images kept for re-use beyond those sessions hold (bytes); the newest is always kept
IMAGE_CACHE_BYTES = 2 * 2**30
#: how many expired / evicted session ids are remembered, to answer "expired" rather than "unknown"
REMEMBERED_GONE = 4096


class ApiError(SAMAdapt3DError):
    """A request the server refuses: HTTP status, error kind, one-line message."""

    def __init__(self, status: int, message: str, kind: str = "RequestError") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class ServerConfig:
    token: str | None = None
    device: str = "auto"
    max_sessions: int = 8
    max_voxels: int = DEFAULT_MAX_VOXELS
    idle_timeout: float = 3600.0
    workers: int = 2
    instance: str = field(default_factory=lambda: secrets.token_hex(8))


class ImageStore:
    """sha256 -> voxel array (read-only); least recently used dropped past IMAGE_CACHE_BYTES."""

    def __init__(self, capacity_bytes: int = IMAGE_CACHE_BYTES) -> None:
        self._items: ByteLRU[np.ndarray] = ByteLRU(capacity_bytes)
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self._items.max_bytes

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, array: np.ndarray) -> None:
        array.setflags(write=False)
        with self._lock:
            self._items.put(key, array, array.nbytes)

    @property
    def nbytes(self) -> int:
        return self._items.used_bytes

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class LoadedModel:
    id: str
    name: str
    device: str
    model: Any

    @property
    def class_names(self) -> list[str] | None:
        names = getattr(self.model, "class_names", None)
        return None if names is None else list(names)

    def describe(self) -> dict:
        return {"model_id": self.id, "name": self.name, "device": self.device,
                "family": getattr(self.model, "family", type(self.model).__name__), "class_names": self.class_names}


class ModelRegistry:
    """Loaded models by id; loading the same (name, device, SAM file) again returns the same id."""

    def __init__(self, loader: Callable[..., Any]) -> None:
        self._loader = loader
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def load(self, name: str, device: str, sam_checkpoint: str | None) -> LoadedModel:
        key = hashlib.sha256(f"{name}\0{device}\0{sam_checkpoint}".encode()).hexdigest()[:16]
        with self._lock:  # one load at a time: two clients asking for the same model load it once
            if key not in self._models:
                model = self._loader(name, sam_checkpoint=sam_checkpoint, device=device)
                self._models[key] = LoadedModel(key, name, str(getattr(model, "device", device)), model)
            return self._models[key]

    def get(self, model_id: str) -> LoadedModel:
        found = self._models.get(model_id)
        if found is None:
            raise ApiError(404, f"unknown model {model_id!r}: load it first (POST /models)", "UnknownModel")
        return found

    def all(self) -> list[LoadedModel]:
        return list(self._models.values())


class ServerSession:
    """One InteractiveSession and what this client was last sent of it (the mask, as a version)."""

    def __init__(self, session_id: str, owner: str, model: LoadedModel, max_undo: int) -> None:
        self.id, self.owner, self.model_id = session_id, owner, model.id
        self.progress = {"fraction": 0.0, "message": "", "seq": 0}
        #: the running operation's latest preview: (number, mask); the number only grows, the mask is None
        #: between operations (`clear_preview`)
        self.preview: tuple[int, np.ndarray | None] = (0, None)
        self.session = InteractiveSession(model.model, progress=self._on_progress, max_undo=max_undo,
                                          preview=self._on_preview)
        self.lock = threading.Lock()  # one operation at a time; cancel and progress do not take it
        self.last_used = time.monotonic()
        self.version = 0
        self._sent: np.ndarray | None = None
        self._sent_planes: np.ndarray | None = None  # which k-planes of _sent hold foreground
        self._seed_obj: np.ndarray | None = None
        self.seed_version = 0

    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress = {"fraction": float(fraction), "message": str(message), "seq": self.progress["seq"] + 1}

    def _on_preview(self, mask: np.ndarray) -> None:
        self.preview = (self.preview[0] + 1, mask)

    def clear_preview(self) -> None:
        """Under the lock, before and after each operation: a preview shows only the operation running."""
        self.preview = (self.preview[0], None)

    def preview_report(self, base_version: int | None) -> dict:
        """The running operation's latest preview as a delta from the mask the client holds at `base_version`
        (whole when out of step); it does not change what the client was sent. No lock: the operation holds it,
        and `_sent` only changes when the operation ends."""
        number, mask = self.preview
        if mask is None:
            return {"preview": number, "delta": None}
        delta, in_step = self._delta_for(base_version, mask)
        return {"preview": number, "base": self.version if in_step else None, "delta": delta.to_json()}

    def _delta_for(self, base_version: int | None, mask: np.ndarray):
        """(mask as a delta from what the client at `base_version` holds, whether it is in step): a client out of
        step gets the mask whole."""
        sent, planes = self._sent, self._sent_planes
        in_step = base_version == self.version and sent is not None
        return mask_delta(sent if in_step else None, mask, planes if in_step else None), in_step

    @property
    def busy(self) -> bool:
        return self.lock.locked()

    def report(self, base_version: int | None) -> dict:
        """The state after an operation: the mask as a delta from the client's `base_version`."""
        s = self.session
        if s.volume is None:
            return {"version": self.version, "image": False}
        new = s.mask
        delta, _ = self._delta_for(base_version, new)
        if delta.box is not None or delta.reset:
            self.version += 1
        self._sent, self._sent_planes = new, delta.planes
        seed = s.seed_mask
        if seed is not self._seed_obj:
            self._seed_obj, self.seed_version = seed, self.seed_version + 1
        return {
            "version": self.version, "image": True, "delta": delta.to_json(),
            "prompts": [{"kind": p.kind, "ijk": list(p.ijk), "ijk_end": None if p.ijk_end is None else list(p.ijk_end),
                         "view_axis": p.view_axis} for p in s.prompts],
            "can_undo": s.can_undo, "can_redo": s.can_redo, "has_probability": s.has_probability,
            "has_seed": seed is not None, "seed_version": self.seed_version,
        }

    def forget_sent(self) -> None:
        """After set_image: the client starts again from an empty mask."""
        self._sent, self._sent_planes, self.version = None, None, self.version + 1


class SessionStore:
    """Sessions by id, each visible only to its owner; idle ones expire, the least recently used is dropped
    when a new one would pass max_sessions."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._sessions: OrderedDict[str, ServerSession] = OrderedDict()
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, owner: str, model: LoadedModel, max_undo: int) -> ServerSession:
        with self._lock:
            self._expire_locked()
            while len(self._sessions) >= self.config.max_sessions:
                idle = [s for s in self._sessions.values() if not s.busy]
                if not idle:
                    raise ApiError(503, f"all {self.config.max_sessions} sessions (--max-sessions) are busy; "
                                        "try again later", "ServerBusy")
                self._drop_locked(idle[0].id, f"was closed to make room (--max-sessions {self.config.max_sessions})")
            session = ServerSession(secrets.token_urlsafe(18), owner, model, max_undo)
            self._sessions[session.id] = session
            return session

    def get(self, session_id: str, owner: str) -> ServerSession:
        with self._lock:
            self._expire_locked()
            session = self._sessions.get(session_id)
            if session is None or session.owner != owner:  # another client's session is as unknown as none
                reason = self._gone.get(session_id) if session is None else None
                if reason is not None:
                    raise ApiError(410, f"session {session_id} {reason}; open a new one", "SessionExpired")
                raise ApiError(404, f"unknown session {session_id!r}", "UnknownSession")
            session.last_used = time.monotonic()
            self._sessions.move_to_end(session_id)
            return session

    def close(self, session_id: str, owner: str) -> None:
        self.get(session_id, owner)
        with self._lock:
            self._drop_locked(session_id, "was closed")

    def owned_by(self, owner: str) -> list[ServerSession]:
        with self._lock:
            return [s for s in self._sessions.values() if s.owner == owner]

    def expire(self) -> None:
        with self._lock:
            self._expire_locked()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for s in list(self._sessions.values()):
            if not s.busy and now - s.last_used > self.config.idle_timeout:
                self._drop_locked(s.id, f"expired after {self.config.idle_timeout:g} s idle (--idle-timeout)")

    def _drop_locked(self, session_id: str, reason: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.session.cancel()
        self._gone[session_id] = reason
        while len(self._gone) > REMEMBERED_GONE:
            self._gone.popitem(last=False)
