"""The HTTP API of `samadapt3d serve` (FastAPI): the InteractiveSession API, one server session per
InteractiveSession; protocol in docs/SERVER.md.

Model runs go to a thread pool, so health, progress and cancel (async, never queued behind a model) stay
responsive. Bodies are read with a size cap checked against Content-Length first; JSON is parsed here (a
malformed body is a 400 with the parser's message); nothing is unpickled.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..client import wire
from ..errors import CancelledError, CheckpointError, DeviceError, InputError, ModelNotFoundError, SAMAdapt3DError
from ..volume import Volume
from .state import ApiError, ImageStore, ModelRegistry, ServerConfig, ServerSession, SessionStore

#: a control request (prompts, geometry) is small; seeds and segment() carry a bit-packed mask on top
CONTROL_BODY_BYTES = 1 << 20
CLIENT_HEADER = "X-Client-Id"
#: the most undo steps a client may ask a session to keep (each holds a packed mask and a uint8 probability)
MAX_UNDO = 256
#: how often idle sessions are looked for
EXPIRY_PERIOD_S = 30.0

_ERROR_STATUS: tuple[tuple[type, int], ...] = (
    (CancelledError, 409), (ModelNotFoundError, 404), (InputError, 422), (CheckpointError, 422),
    (DeviceError, 503), (SAMAdapt3DError, 400),
)


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=status)


def create_app(config: ServerConfig, loader: Callable[..., Any] | None = None) -> FastAPI:
    """The app; `loader(name, sam_checkpoint=, device=)` loads a model (default: samadapt3d.load_model)."""
    if loader is None:
        from ..models import load_model as loader
    pool = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="samadapt3d-serve")
    # previews are read while the operation they show holds a model thread: never queued behind a model
    preview_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samadapt3d-preview")
    images, models, sessions = ImageStore(), ModelRegistry(loader), SessionStore(config)
    seed_body_bytes = CONTROL_BODY_BYTES + wire.compressed_bound(config.max_voxels // 8 + 1) * 4 // 3

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def expire_forever():
            while True:
                await asyncio.sleep(min(EXPIRY_PERIOD_S, max(0.5, config.idle_timeout / 4)))
                sessions.expire()

        task = asyncio.get_running_loop().create_task(expire_forever())
        yield
        task.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        preview_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="samadapt3d", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.kind, str(exc))

    @app.exception_handler(SAMAdapt3DError)
    async def library_error(request: Request, exc: SAMAdapt3DError):
        status = next(code for cls, code in _ERROR_STATUS if isinstance(exc, cls))
        return _error(status, type(exc).__name__, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return _error(500, "InternalError", f"{type(exc).__name__}: {exc}")

    def check_token(request: Request) -> None:
        if config.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "this server needs a token: send 'Authorization: Bearer <token>'", "AuthError")
        if not hmac.compare_digest(token.encode(), config.token.encode()):  # constant time
            raise ApiError(401, "wrong token", "AuthError")

    def client_of(request: Request) -> str:
        return request.headers.get(CLIENT_HEADER, "")[:128]

    async def run(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    api = APIRouter(dependencies=[Depends(check_token)])

    @app.get("/health")
    async def health():
        return {"status": "ok", "version": __version__, "instance": config.instance}

    @api.get("/info")
    async def info():
        return {"version": __version__, "instance": config.instance, "python": sys.version.split()[0],
                "device": _device_info(config.device), "memory": _memory_info(images),
                "sessions": len(sessions), "images": len(images),
                "limits": {"max_sessions": config.max_sessions, "max_voxels": config.max_voxels,
                           "idle_timeout": config.idle_timeout}}

    # ---- models ---------------------------------------------------------------------------------
    @api.get("/models")
    async def list_models():
        from ..models import builtin_model_names

        return {"builtin": builtin_model_names(), "loaded": [m.describe() for m in models.all()]}

    @api.post("/models")
    async def load_model(request: Request):
        body = await _json(request, CONTROL_BODY_BYTES)
        name = _field(body, "name", str)
        device = _field(body, "device", str, "auto")
        device = config.device if device == "auto" else device
        sam = _field(body, "sam_checkpoint", (str, type(None)), None)
        loaded = await run(lambda: models.load(name, device, sam))
        return loaded.describe()

    @api.post("/models/{model_id}/auto")
    async def auto(model_id: str, request: Request):
        from ..automatic import segment_all_classes

        model = models.get(model_id)
        body = await _json(request, CONTROL_BODY_BYTES)
        volume = _volume_of(body, images)
        stride = _field(body, "stride", int, 1)
        labels, names = await run(lambda: segment_all_classes(model.model, volume, stride=stride))
        return {"labels": wire.encode_array(labels), "class_names": list(names)}

    # ---- images ---------------------------------------------------------------------------------
    @api.get("/images/{image_id}")
    async def has_image(image_id: str):
        array = images.get(image_id)
        if array is None:
            raise ApiError(404, f"unknown image {image_id}: upload it (PUT /images/{image_id})", "UnknownImage")
        return {"image": image_id, "shape": list(array.shape), "dtype": array.dtype.str}

    @api.put("/images/{image_id}")
    async def upload_image(image_id: str, request: Request):
        shape = wire.parse_shape(request.headers.get(wire.SHAPE_HEADER, ""), f"the {wire.SHAPE_HEADER} header")
        dtype = request.headers.get(wire.DTYPE_HEADER, "")
        if dtype not in wire.IMAGE_DTYPES:
            raise ApiError(400, f"the {wire.DTYPE_HEADER} header must be one of {', '.join(wire.IMAGE_DTYPES)}, "
                                f"got {dtype!r}")
        count = int(np.prod(shape))
        if count > config.max_voxels:
            raise ApiError(413, f"image of {shape} = {count} voxels is more than this server's --max-voxels "
                                f"{config.max_voxels}", "TooLarge")
        raw_size = count * np.dtype(dtype).itemsize
        body = await _body(request, wire.compressed_bound(raw_size))
        if image_id in images:
            return {"image": image_id, "stored": False}  # content-addressed: the same image is there already

        def store() -> None:
            raw = wire.inflate(body, raw_size, "image upload")
            if wire.image_id(raw, shape, dtype) != image_id:
                raise ApiError(400, "image upload: the voxels do not match their sha256 address", "HashMismatch")
            images.put(image_id, np.frombuffer(raw, dtype=dtype).reshape(shape))

        await run(store)
        return {"image": image_id, "stored": True}

    # ---- sessions -------------------------------------------------------------------------------
    @api.get("/sessions")
    async def list_sessions(request: Request):
        return {"sessions": [{"session_id": s.id, "model_id": s.model_id, "busy": s.busy}
                             for s in sessions.owned_by(client_of(request))]}

    @api.post("/sessions")
    async def open_session(request: Request):
        body = await _json(request, CONTROL_BODY_BYTES)
        model = models.get(_field(body, "model_id", str))
        max_undo = _field(body, "max_undo", int, 32)
        if not 0 <= max_undo <= MAX_UNDO:
            raise ApiError(400, f"max_undo must be 0..{MAX_UNDO}, got {max_undo}")
        session = await run(lambda: sessions.create(client_of(request), model, max_undo))
        return {"session_id": session.id, "model_id": model.id}

    @api.delete("/sessions/{session_id}")
    async def close_session(session_id: str, request: Request):
        sessions.close(session_id, client_of(request))
        return {"closed": session_id}

    @api.get("/sessions/{session_id}/progress")
    async def progress(session_id: str, request: Request):
        s = sessions.get(session_id, client_of(request))
        return dict(s.progress, busy=s.busy, preview=s.preview[0])

    @api.get("/sessions/{session_id}/preview")
    async def preview(session_id: str, request: Request):
        s = sessions.get(session_id, client_of(request))
        base = _base_of(request.query_params.get("base"))
        return await asyncio.get_running_loop().run_in_executor(preview_pool, lambda: s.preview_report(base))

    @api.post("/sessions/{session_id}/cancel")
    async def cancel(session_id: str, request: Request):
        s = sessions.get(session_id, client_of(request))
        s.session.cancel()
        return {"cancelled": s.busy}

    @api.get("/sessions/{session_id}/state")
    async def state(session_id: str, request: Request):
        s = sessions.get(session_id, client_of(request))
        base = _base_of(request.query_params.get("base"))
        return await run(lambda: _locked(s, lambda: None, base))

    @api.get("/sessions/{session_id}/probability")
    async def probability(session_id: str, request: Request):
        s = sessions.get(session_id, client_of(request))
        prob = s.session.probability
        return {"probability": None if prob is None else await run(lambda: wire.encode_array(prob))}

    @api.get("/sessions/{session_id}/seed")
    async def seed(session_id: str, request: Request):
        s = sessions.get(session_id, client_of(request))
        seed = s.session.seed_mask
        return {"seed_version": s.seed_version, "seed": None if seed is None else wire.encode_bits(seed)}

    @api.post("/sessions/{session_id}/{operation}")
    async def operate(session_id: str, operation: str, request: Request):
        s = sessions.get(session_id, client_of(request))
        handler = _OPERATIONS.get(operation)
        if handler is None:
            raise ApiError(404, f"unknown operation {operation!r}; one of {', '.join(sorted(_OPERATIONS))}",
                           "UnknownOperation")
        body = await _json(request, seed_body_bytes if operation in _MASK_BODIES else CONTROL_BODY_BYTES)
        base = _field(body, "base", (int, type(None)), None)
        context = _Context(s, body, images, config)
        return await run(lambda: _locked(s, lambda: handler(context), base))

    app.include_router(api)
    return app


class _Context:
    def __init__(self, s: ServerSession, body: dict, images: ImageStore, config: ServerConfig) -> None:
        self.s, self.session, self.body, self.images, self.config = s, s.session, body, images, config

    def seed(self, key: str = "seed") -> np.ndarray | None:
        obj = self.body.get(key)
        if obj is None:
            return None
        shape = None if self.session.volume is None else self.session.volume.array.shape
        return wire.decode_bits(obj, shape, self.config.max_voxels, "seed mask")


def _locked(s: ServerSession, fn: Callable[[], Any], base: int | None) -> dict:
    with s.lock:
        started = time.perf_counter()
        s.last_used = time.monotonic()
        s.clear_preview()
        try:
            result = fn()
        finally:
            s.clear_preview()
        computed = time.perf_counter()
        out = s.report(base)
        if result is not None:
            out["result"] = result
        # what the session itself took, and the delta: a client can tell compute from transport
        out["seconds"] = {"session": computed - started, "report": time.perf_counter() - computed}
        s.last_used = time.monotonic()
        return out


def _set_image(c: _Context) -> None:
    volume = _volume_of(c.body, c.images)
    c.session.set_image(volume)
    c.s.forget_sent()


def _prepare(c: _Context) -> int:
    return int(c.session.prepare(background=_field(c.body, "background", bool, False)))


def _point(c: _Context) -> None:
    c.session.add_point(_field(c.body, "coord", list), positive=_field(c.body, "positive", bool, True),
                        space=_field(c.body, "space", str, "ijk"),
                        view_axis=_field(c.body, "view_axis", (int, type(None)), None))


def _box(c: _Context) -> None:
    c.session.set_box(_field(c.body, "corner_a", list), _field(c.body, "corner_b", list),
                      space=_field(c.body, "space", str, "ijk"))


def _segment(c: _Context) -> None:
    box = _field(c.body, "box", (list, type(None)), None)
    if box is not None and len(box) != 2:
        raise InputError(f"box must be two corners, got {box!r}")
    c.session.segment(positive=_field(c.body, "positive", list, []), negative=_field(c.body, "negative", list, []),
                      box=box, space=_field(c.body, "space", str, "ijk"), seed=c.seed())


_OPERATIONS: dict[str, Callable[[_Context], Any]] = {
    "image": _set_image,
    "prepare": _prepare,
    "point": _point,
    "box": _box,
    "clear_box": lambda c: (c.session.clear_box(), None)[1],
    "remove_prompt": lambda c: (c.session.remove_prompt(_field(c.body, "index", int)), None)[1],
    "seed": lambda c: (c.session.set_seed_mask(c.seed()), None)[1],
    "reset": lambda c: (c.session.reset(), None)[1],
    "segment": _segment,
    "undo": lambda c: (c.session.undo(), None)[1],
    "redo": lambda c: (c.session.redo(), None)[1],
}
_MASK_BODIES = ("seed", "segment")


def _volume_of(body: dict, images: ImageStore) -> Volume:
    image_id = _field(body, "image", str)
    array = images.get(image_id)
    if array is None:
        raise ApiError(404, f"unknown image {image_id}: upload it first (PUT /images/{image_id})", "UnknownImage")
    return Volume(array, _field(body, "spacing", list), _field(body, "origin", list), _field(body, "direction", list))


_MISSING = object()


def _field(body: dict, key: str, kind, default=_MISSING):
    value = body.get(key, default)
    if value is _MISSING:
        raise ApiError(400, f"missing field {key!r}")
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ApiError(400, f"field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _base_of(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"base must be an integer, got {text!r}") from None


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused (413) before reading when Content-Length says it is over `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"bad Content-Length {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes is more than the {limit} allowed here", "TooLarge")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is more than the {limit} bytes allowed here", "TooLarge")
        chunks.append(chunk)
    body = b"".join(chunks)
    if declared is not None and len(body) != int(declared):
        raise ApiError(400, f"truncated body: {len(body)} of {declared} bytes")
    return body


async def _json(request: Request, limit: int) -> dict:
    body = await _body(request, limit)
    try:
        value = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}", "MalformedJSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(value).__name__}", "MalformedJSON")
    return value


def _device_info(device: str) -> dict:
    import torch

    from ..device import resolve_device

    resolved = resolve_device(device)
    out: dict[str, Any] = {"requested": device, "resolved": str(resolved), "torch": torch.__version__,
                           "cuda_available": torch.cuda.is_available()}
    if resolved.type == "cuda":
        free, total = torch.cuda.mem_get_info(resolved)
        out.update(name=torch.cuda.get_device_name(resolved), memory_free=int(free), memory_total=int(total),
                   memory_allocated=int(torch.cuda.memory_allocated(resolved)))
    return out


def _memory_info(images: ImageStore) -> dict:
    out = {"image_cache_bytes": images.nbytes}
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{os.getpid()}/statm") as f:
            out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return out
