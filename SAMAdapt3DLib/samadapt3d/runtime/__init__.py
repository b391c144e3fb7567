"""Accelerated encoder backends (OpenVINO, torch bf16 autocast) and the capability a model declares for them.

A SliceModel that inherits `EncoderRuntime` says what its embeddings depend on beyond the pixels (weights,
precision, backend: `embedding_identity`, the key of the on-disk embedding cache) and whether they are the
exact fp32 ones (`embeddings_exact`; if not, the cache keeps them compact). Nothing heavy is imported here.
"""
from __future__ import annotations

from typing import TypeVar

from ..errors import InputError

_M = TypeVar("_M")

#: precisions a user can ask for: "auto" = the fastest path whose masks match fp32 (OpenVINO fp32 on a CPU),
#: "fp32" = exact PyTorch float32, "bf16" = bfloat16 compute (OpenVINO on CPU when installed, torch autocast
#: otherwise; faster, masks slightly different)
PRECISIONS = ("auto", "fp32", "bf16")


class EncoderRuntime:
    """Mixin for a model whose image encoder can run on an accelerated backend."""

    def embedding_identity(self) -> str | None:
        """What the embeddings depend on besides the pixels (weights, precision, backend); None: not
        persistable (e.g. weights being trained)."""
        return None

    def embeddings_exact(self) -> bool:
        """True when embeddings are the exact fp32 PyTorch ones."""
        return True

    def set_precision(self, precision: str) -> None:
        """Choose the encoder's precision (one of PRECISIONS)."""
        _check_fp32_only(type(self).__name__, precision)

    def warm_backends(self) -> None:
        """Build (export at first use, compile) the accelerated backends now, e.g. in a background thread before
        the first click; nothing to do by default."""

    def release_memory(self) -> None:
        """Give back the encoder backend's working memory while nothing is left to embed (OpenVINO keeps ~250 MiB
        of buffers after an inference); the next embedding allocates it again, with the same result. Nothing to
        do by default."""


def _check_fp32_only(name: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        raise InputError(f"{name} runs in fp32 only (precision 'bf16' is for LiteMedSAM)")


def apply_precision(model: _M, precision: str | None) -> _M:
    """`load_model(precision=...)`: set it on a model that has a choice; others accept "auto"/"fp32" only."""
    if precision is None:
        return model
    if isinstance(model, EncoderRuntime):
        model.set_precision(precision)
    else:
        _check_fp32_only(type(model).__name__, precision)
    return model
