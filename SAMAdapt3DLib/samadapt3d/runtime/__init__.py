"""Accelerated encoder backends (OpenVINO, torch bf16 autocast) and the capability a model declares for them.

A SliceModel that inherits `EncoderRuntime` says what its embeddings depend on beyond the pixels (weights,
precision, backend: `embedding_identity`, the key of the on-disk embedding cache) and whether they are the
exact fp32 ones (`embeddings_exact`; if not, the cache keeps them compact). Nothing heavy is imported here.
"""
from __future__ import annotations

#: precisions a user can ask for: "auto" = the fastest measured path this machine has, "fp32" = exact PyTorch
#: float32, "bf16" = bfloat16 compute (OpenVINO on CPU when installed, torch autocast otherwise)
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
