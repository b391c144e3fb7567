"""RemoteSession: InteractiveSession's methods, properties and return values, computed by a server.

The client keeps the mask (updated from each answer's changed bounding box), the prompts, the seed and the
image, so it can rebuild its server session when the server was restarted or the session expired: the image,
the seed and the prompts are replayed in order and the next call goes on as if nothing happened (the server's
undo history then holds the replayed steps instead of the original ones).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from ..session import PreviewCallback, Prompt, box_to_index, check_finite, point_to_index, require_image
from ..volume import Volume
from . import wire
from .transport import ServerError

ProgressCallback = Callable[[float, str], None]
#: how often a running call's progress is asked for (only when a progress or preview callback is set)
PROGRESS_POLL_S = 0.1
#: server error kinds after which the session is rebuilt and the call made once more
_REBUILD_KINDS = ("UnknownSession", "SessionExpired")


def _coords(value, what: str = "a point") -> list:
    try:
        return np.asarray(value, dtype=np.float64).tolist()
    except (TypeError, ValueError):
        raise InputError(f"{what} needs 3 coordinates, got {value!r}") from None


def _as_seed(mask) -> np.ndarray:
    seed = np.asarray(mask)
    return np.ascontiguousarray(seed > 0.5 if seed.dtype != np.bool_ else seed)


class RemoteSession:
    """A drop-in for InteractiveSession whose model runs on a `samadapt3d serve` server (see ServerClient)."""

    def __init__(self, client, model_id: str, max_undo: int = 32, progress: ProgressCallback | None = None,
                 preview: PreviewCallback | None = None) -> None:
        """`progress` and `preview` as InteractiveSession's (`preview` gets the server's previews of a running
        call: the mask so far, bool [k, j, i], read-only)."""
        self.client, self.model_id, self.max_undo = client, model_id, int(max_undo)
        self.progress = progress
        self.preview = preview
        self.volume: Volume | None = None
        self._image_id: str | None = None
        self._mask: np.ndarray | None = None
        self._planes: np.ndarray | None = None  # which k-planes of the mask hold foreground (wire.plane_occupancy)
        self._version = -1
        self._prompts: list[Prompt] = []
        self._seed: np.ndarray | None = None
        self._seed_version = 0
        self._flags = {"can_undo": False, "can_redo": False, "has_probability": False}
        self._probability: tuple[np.ndarray | None] | None = None  # fetched on first use after each change
        self._lock = threading.RLock()
        self._busy = 0
        self._poller: ThreadPoolExecutor | None = None
        self.last_server_seconds: dict[str, float] = {}
        self._pending: tuple[list[Prompt], np.ndarray | None] | None = None
        self.session_id = client.create_session(model_id, self.max_undo)
        self._instance = client.instance

    # ---- image ----------------------------------------------------------------------------------
    def set_image(self, volume: Volume) -> None:
        if not isinstance(volume, Volume):
            raise InputError(f"set_image expects a samadapt3d Volume, got {type(volume).__name__}")
        check_finite(volume.array)
        with self._lock:
            self._ensure_session(replay=False)
            self._send_image(volume)
            self.volume, self._pending = volume, None  # a new image: nothing of the old one to replay

    def _send_image(self, volume: Volume) -> None:
        image_id = self.client.upload_image(volume.array)
        payload = dict(self.client.geometry(volume), image=image_id)
        self._image_id = image_id
        self._run("image", payload, shape=volume.array.shape)  # answered with a reset delta: an empty mask

    def prepare(self, background: bool = False) -> int:
        """See InteractiveSession.prepare (background=True: the server embeds in the background, answers at once)."""
        self._require_image()
        return int(self._op("prepare", {"background": True} if background else None))

    # ---- read-only state ------------------------------------------------------------------------
    def _require_image(self) -> Volume:
        return require_image(self.volume)

    @property
    def mask(self) -> np.ndarray:
        self._require_image()
        return self._mask

    @property
    def probability(self) -> np.ndarray | None:
        with self._lock:
            if not self._flags["has_probability"] or self.volume is None:
                return None
            if self._probability is None:
                answer = self.client.call("GET", f"/sessions/{self.session_id}/probability", idempotent=True)
                obj = answer["probability"]
                prob = None if obj is None else wire.decode_array(obj, self.volume.array.size, "probability")
                if prob is not None:
                    prob = prob.astype(np.float32, copy=True)
                    prob.setflags(write=False)
                self._probability = (prob,)
            return self._probability[0]

    @property
    def prompts(self) -> list[Prompt]:
        return list(self._prompts)

    @property
    def seed_mask(self) -> np.ndarray | None:
        return self._seed

    @property
    def has_probability(self) -> bool:
        """Whether `probability` is an array (the server says so with each mask; asking fetches nothing)."""
        return bool(self._flags["has_probability"]) and self.volume is not None

    @property
    def can_undo(self) -> bool:
        return self._flags["can_undo"]

    @property
    def can_redo(self) -> bool:
        return self._flags["can_redo"]

    @property
    def busy(self) -> bool:
        return self._busy > 0

    # ---- prompts (checked here with the session's own rules, computed there) --------------------
    def to_index(self, coord, space: str = "ijk") -> np.ndarray:
        return point_to_index(self._require_image(), coord, space)

    def box_to_index(self, corner_a, corner_b, space: str = "ijk") -> tuple[tuple, tuple]:
        return box_to_index(self._require_image(), corner_a, corner_b, space)

    def add_point(self, coord, positive: bool = True, space: str = "ijk", view_axis: int | None = None) -> np.ndarray:
        self.to_index(coord, space)
        if view_axis is not None and view_axis not in (0, 1, 2):
            raise InputError(f"view_axis must be 0, 1, 2 (an ijk axis) or None, got {view_axis!r}")
        view = None if view_axis is None else int(view_axis)
        return self._mask_op("point", {"coord": _coords(coord), "positive": bool(positive), "space": space,
                                       "view_axis": view})

    def set_box(self, corner_a, corner_b, space: str = "ijk") -> np.ndarray:
        self.box_to_index(corner_a, corner_b, space)
        return self._mask_op("box", {"corner_a": _coords(corner_a, "a box corner"),
                                     "corner_b": _coords(corner_b, "a box corner"), "space": space})

    def clear_box(self) -> np.ndarray:
        self._require_image()
        return self._mask_op("clear_box")

    def remove_prompt(self, index: int) -> np.ndarray:
        self._require_image()
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise InputError(f"no prompt {index!r}: the session has {len(self._prompts)} prompts")
        return self._mask_op("remove_prompt", {"index": int(index)})

    def set_seed_mask(self, mask_kji: np.ndarray | None) -> np.ndarray:
        volume = self._require_image()
        if mask_kji is None:
            return self._mask_op("seed", {"seed": None}, sent_seed=None)
        seed = np.asarray(mask_kji)
        if seed.shape != volume.array.shape:
            raise InputError(f"seed mask shape {seed.shape} does not match the image's {volume.array.shape} [k, j, i]")
        check_finite(seed, "the seed mask")
        seed = _as_seed(seed)
        return self._mask_op("seed", {"seed": wire.encode_bits(seed)}, sent_seed=seed)

    def reset(self) -> np.ndarray:
        self._require_image()
        return self._mask_op("reset")

    def segment(self, positive: Sequence = (), negative: Sequence = (), box=None, space: str = "ijk",
                seed: np.ndarray | None = None) -> np.ndarray:
        self._require_image()
        payload = {"positive": [_coords(p) for p in positive], "negative": [_coords(p) for p in negative],
                   "box": None if box is None else [_coords(box[0], "a box corner"), _coords(box[1], "a box corner")],
                   "space": space, "seed": None}
        sent = None
        if seed is not None:
            sent = _as_seed(seed)
            payload["seed"] = wire.encode_bits(sent)
        return self._mask_op("segment", payload, sent_seed=sent)

    def undo(self) -> np.ndarray:
        self._require_image()
        return self._mask_op("undo")

    def redo(self) -> np.ndarray:
        self._require_image()
        return self._mask_op("redo")

    # ---- cancel / close -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel the running computation, if any (safe from any thread)."""
        try:
            self.client.call("POST", f"/sessions/{self.session_id}/cancel", {}, idempotent=True)
        except ServerError:
            pass  # a server that is gone runs nothing

    def close(self) -> None:
        """Drop the server session (the server also drops idle ones by itself)."""
        try:
            self.client.call("DELETE", f"/sessions/{self.session_id}", idempotent=True)
        except (ServerError, InputError):
            pass
        if self._poller is not None:
            self._poller.shutdown(wait=False)

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the one place that talks to the server about the session -------------------------------
    _KEEP = object()

    def _mask_op(self, name: str, payload: dict | None = None, sent_seed=_KEEP) -> np.ndarray:
        self._op(name, payload, sent_seed)
        return self._mask

    def _op(self, name: str, payload: dict | None = None, sent_seed=_KEEP):
        with self._lock:
            self._ensure_session(replay=True)
            try:
                return self._run(name, payload, sent_seed=sent_seed)
            except ServerError as exc:
                if exc.kind not in _REBUILD_KINDS:
                    raise
            self._rebuild()
            return self._run(name, payload, sent_seed=sent_seed)

    def _run(self, name: str, payload: dict | None, sent_seed=_KEEP, shape=None):
        body = dict(payload or {}, base=self._version)
        path = f"/sessions/{self.session_id}/{name}"
        self._busy += 1
        try:
            answer = self._post(path, body)
        finally:
            self._busy -= 1
        self._apply(answer, shape or self.volume.array.shape, sent_seed)
        #: the server's time for the last call: {"session": the InteractiveSession call, "report": its delta}
        self.last_server_seconds = answer.get("seconds", {})
        return answer.get("result")

    def _post(self, path: str, body: dict) -> dict:
        if self.progress is None and self.preview is None:
            return self.client.call("POST", path, body, compute=True)
        if self._poller is None:
            self._poller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samadapt3d-client")
        future = self._poller.submit(self.client.call, "POST", path, body, False, True)
        seen = -1
        # previews numbered up to this one are from earlier calls
        shown = None
        try:
            while True:
                try:
                    answer = future.result(timeout=PROGRESS_POLL_S)
                    break
                except FutureTimeout:
                    seen, shown = self._report_progress(seen, shown)
            if self.progress is not None:
                self._report_progress(seen, None)
            return answer
        except BaseException:
            if not future.done():  # the callback raised (e.g. the user's cancel): stop the server's run too
                self.cancel()
                future.exception()
            raise

    def _report_progress(self, seen: int, shown: int | None) -> tuple[int, int | None]:
        """Ask for the running call's progress and report what is new; returns (progress seq, preview number).
        `shown`: the number of the last preview seen; None on the first ask, where the server's current number
        belongs to an earlier call (and after the call, when only the progress is wanted)."""
        try:
            state = self.client.call("GET", f"/sessions/{self.session_id}/progress", idempotent=True)
        except ServerError:
            return seen, shown
        if self.progress is not None and state["seq"] != seen and state["seq"] > 0:
            self.progress(float(state["fraction"]), str(state["message"]))
        number = int(state.get("preview", 0))
        if shown is None:
            return state["seq"], number
        if self.preview is not None and number != shown:
            self._report_preview()
        return state["seq"], number

    def _report_preview(self) -> None:
        try:
            got = self.client.call("GET", f"/sessions/{self.session_id}/preview?base={self._version}",
                                   idempotent=True)
        except ServerError:
            return
        if got.get("delta") is None:
            return  # the call it belonged to has ended
        shape = tuple(self.volume.array.shape)
        delta = wire.MaskDelta.from_json(got["delta"], int(np.prod(shape)))
        base = self._mask if got.get("base") is not None and got["base"] == self._version else None
        self.preview(delta.apply(base, shape))  # a whole mask (reset) ignores the base

    def _apply(self, answer: dict, shape, sent_seed) -> None:
        if not answer.get("image"):
            return
        delta = wire.MaskDelta.from_json(answer["delta"], int(np.prod(shape)))
        base = None if delta.reset else self._mask
        self._mask, self._planes = delta.apply_tracked(base, tuple(shape), None if base is None else self._planes)
        self._probability = None
        self._version = int(answer["version"])
        self._prompts = [Prompt(p["kind"], tuple(p["ijk"]), None if p["ijk_end"] is None else tuple(p["ijk_end"]),
                                p["view_axis"]) for p in answer["prompts"]]
        self._flags = {key: bool(answer[key]) for key in self._flags}
        if answer["seed_version"] != self._seed_version:
            self._seed_version = answer["seed_version"]
            if not answer["has_seed"]:
                self._seed = None
            elif sent_seed is not self._KEEP and sent_seed is not None:
                self._seed = sent_seed
            else:  # undo / redo brought back an earlier seed: keep a copy, a rebuild needs it
                got = self.client.call("GET", f"/sessions/{self.session_id}/seed", idempotent=True)
                self._seed = wire.decode_bits(got["seed"], tuple(shape), int(np.prod(shape)), "seed")
            if self._seed is not None:
                self._seed = self._seed.copy() if self._seed.flags.writeable else self._seed
                self._seed.setflags(write=False)

    # ---- rebuilding after a server restart or an expired session -------------------------------
    def _ensure_session(self, replay: bool) -> None:
        if self._instance != self.client.instance:
            if replay:
                self._rebuild()
            else:
                self._new_server_session()
                self._instance = self.client.instance

    def _new_server_session(self) -> None:
        self.session_id = self.client.create_session(self.model_id, self.max_undo)
        self._version = -1

    def _rebuild(self) -> None:
        """A new server session in the state this one had: image, seed, then every prompt in order."""
        if self._pending is None:  # kept until a replay succeeds: a half-done one must not shorten the history
            self._pending = (list(self._prompts), self._seed)
        prompts, seed = self._pending
        self._new_server_session()
        if self.volume is None:
            self._instance, self._pending = self.client.instance, None
            return
        self._send_image(self.volume)
        if seed is not None:
            self._run("seed", {"seed": wire.encode_bits(seed)}, sent_seed=seed)
        for p in prompts:
            if p.kind == "box":
                self._run("box", {"corner_a": list(p.ijk), "corner_b": list(p.ijk_end), "space": "ijk"})
            else:
                self._run("point", {"coord": list(p.ijk), "positive": p.kind == "positive", "space": "ijk",
                                    "view_axis": p.view_axis})
        self._instance, self._pending = self.client.instance, None  # only now: a half-done replay is redone
