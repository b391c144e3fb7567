"""ServerClient: models, images, sessions and `auto` on a `samadapt3d serve` server (stdlib + numpy)."""
from __future__ import annotations

import secrets
import threading

import numpy as np

from ..errors import InputError
from ..volume import Volume
from . import wire
from .transport import ServerError, Transport, decode_answer

#: how long a model run (a click, prepare, auto) may take before the client gives up on it
COMPUTE_TIMEOUT_S = 3600.0


class ServerClient:
    """One server. `timeout` bounds short calls (health, state, uploads per socket read), `compute_timeout`
    those that run a model."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0,
                 compute_timeout: float = COMPUTE_TIMEOUT_S) -> None:
        self.transport = Transport(url, token, timeout, secrets.token_hex(16))
        self.compute_timeout = float(compute_timeout)
        #: the server process we talk to (from /health); a change means sessions must be rebuilt
        self.instance: str | None = None
        self._loads: dict[str, tuple[str, str, str | None]] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.transport.url

    def call(self, method: str, path: str, payload: dict | None = None, idempotent: bool = False,
             compute: bool = False) -> dict:
        return self.transport.call(method, path, payload, idempotent, self.compute_timeout if compute else None)

    # ---- server ---------------------------------------------------------------------------------
    def health(self) -> dict:
        answer = self.call("GET", "/health", idempotent=True)
        self.instance = answer.get("instance")
        return answer

    def info(self) -> dict:
        """Version, device (with GPU memory on CUDA), process memory, sessions and limits."""
        return self.call("GET", "/info", idempotent=True)

    def models(self) -> dict:
        """{"builtin": [names], "loaded": [{model_id, name, device, family, class_names}]}"""
        return self.call("GET", "/models", idempotent=True)

    def load_model(self, name_or_path: str, device: str = "auto", sam_checkpoint: str | None = None) -> str:
        """Load a model on the server (paths are the server's); returns its model id (the same for the same
        arguments, so loading twice is cheap)."""
        payload = {"name": str(name_or_path), "device": device,
                   "sam_checkpoint": None if sam_checkpoint is None else str(sam_checkpoint)}
        answer = self.call("POST", "/models", payload, idempotent=True, compute=True)
        self._loads[answer["model_id"]] = (payload["name"], device, payload["sam_checkpoint"])
        return answer["model_id"]

    def describe_model(self, model_id: str) -> dict:
        for model in self.models()["loaded"]:
            if model["model_id"] == model_id:
                return model
        raise ServerError(f"unknown model {model_id!r}: load it first", 404, "UnknownModel")

    # ---- images ---------------------------------------------------------------------------------
    def upload_image(self, array: np.ndarray) -> str:
        """Upload voxels once (content-addressed): returns the image id; nothing is sent when the server
        has them already."""
        raw, dtype = wire.image_bytes(array)
        image_id = wire.image_id(raw, array.shape, dtype)
        try:
            self.call("GET", f"/images/{image_id}", idempotent=True)
            return image_id
        except ServerError as exc:
            if exc.kind != "UnknownImage":
                raise
        headers = {wire.SHAPE_HEADER: ",".join(str(n) for n in array.shape), wire.DTYPE_HEADER: dtype,
                   "Content-Type": "application/octet-stream"}
        status, data = self.transport.request("PUT", f"/images/{image_id}", wire.deflate(raw), headers,
                                              idempotent=True, timeout=self.compute_timeout)
        decode_answer(status, data, "image upload")
        return image_id

    @staticmethod
    def geometry(volume: Volume) -> dict:
        return {"spacing": [float(v) for v in volume.spacing], "origin": [float(v) for v in volume.origin],
                "direction": np.asarray(volume.direction, dtype=np.float64).tolist()}

    # ---- sessions -------------------------------------------------------------------------------
    def open_session(self, model_id: str, max_undo: int = 32, progress=None, preview=None) -> "RemoteSession":
        from .remote import RemoteSession

        return RemoteSession(self, model_id, max_undo=max_undo, progress=progress, preview=preview)

    def create_session(self, model_id: str, max_undo: int = 32) -> str:
        """A new server session (id); a model this client loaded before a server restart is loaded again."""
        if self.instance is None:
            self.health()  # sessions remember the server instance they were made on (a restart changes it)
        try:
            return self.call("POST", "/sessions", {"model_id": model_id, "max_undo": int(max_undo)})["session_id"]
        except ServerError as exc:
            if exc.kind != "UnknownModel" or model_id not in self._loads:
                raise
        name, device, sam = self._loads[model_id]
        if self.load_model(name, device, sam) != model_id:
            raise ServerError(f"model {name!r} came back under another id after a server restart", None, "Model")
        return self.call("POST", "/sessions", {"model_id": model_id, "max_undo": int(max_undo)})["session_id"]

    def sessions(self) -> list[dict]:
        """This client's sessions on the server."""
        return self.call("GET", "/sessions", idempotent=True)["sessions"]

    # ---- multi-class models -------------------------------------------------------------------
    def auto(self, model_id: str, volume: Volume, stride: int = 1) -> tuple[np.ndarray, tuple[str, ...]]:
        """Every class of a prompt-free multi-class model: (label map [k, j, i], class names of labels 1..K)."""
        if not isinstance(volume, Volume):
            raise InputError(f"auto expects a samadapt3d Volume, got {type(volume).__name__}")
        payload = dict(self.geometry(volume), image=self.upload_image(volume.array), stride=int(stride))
        answer = self.call("POST", f"/models/{model_id}/auto", payload, compute=True)
        labels = wire.decode_array(answer["labels"], int(np.prod(volume.array.shape)), "label map")
        if labels.shape != volume.array.shape:
            raise ServerError(f"the label map has shape {labels.shape}, not the image's {volume.array.shape}")
        return labels.copy(), tuple(answer["class_names"])
