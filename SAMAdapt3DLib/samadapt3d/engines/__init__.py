"""Engines: run a model family on a whole model-space volume (crops or slices)."""
from .base import Engine, ModelPrompts, ProgressCallback

__all__ = ["Engine", "ModelPrompts", "ProgressCallback"]
