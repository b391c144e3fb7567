"""Label files: plain label maps (NIfTI, NRRD, MHA, ...) and Slicer segmentations (.seg.nrrd).

SimpleITK reads a .seg.nrrd with several layers as a 3D image with one component per layer
("kinds: list domain domain domain"), and some label files as 4D scalar images (one 3D volume per
layer, e.g. a 4D NIfTI); both become a list of 3D layers here. Segment names and label values come
from Slicer's `SegmentN_Name` / `SegmentN_LabelValue` / `SegmentN_Layer` header fields when present.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Volume, read_sitk_image


@dataclass(frozen=True)
class Segment:
    name: str
    label_value: int
    layer: int = 0


@dataclass
class LabelFile:
    layers: list[Volume]  # integer label maps, all on one grid
    segments: list[Segment]

    @property
    def grid(self) -> Volume:
        return self.layers[0]

    def mask(self, segment: str | int | None = None) -> np.ndarray:
        """Bool [k, j, i] of one segment (by name, case-insensitive, or label value), or of every
        non-zero voxel when `segment` is None."""
        if segment is None:
            out = np.zeros(self.grid.array.shape, dtype=bool)
            for layer in self.layers:
                out |= layer.array != 0
            return out
        found = self.find(segment)
        return self.layers[found.layer].array == found.label_value

    def find(self, segment: str | int) -> Segment:
        text = str(segment).strip()
        for s in self.segments:
            if s.name.lower() == text.lower():
                return s
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is not None:
            for s in self.segments:
                if s.label_value == value:
                    return s
        names = ", ".join(f"{s.name} ({s.label_value})" for s in self.segments) or "none"
        raise InputError(f"no segment {segment!r} in the label file; it has: {names}")


def read_labels(path: str | os.PathLike, max_mb: float | None = None) -> LabelFile:
    import SimpleITK as sitk

    path = Path(path)
    image = read_sitk_image(path, "label image", max_mb)
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InputError(f"{path}: label voxels must be finite")
        if not np.all(array == np.round(array)):
            raise InputError(f"{path}: label voxels must be whole numbers")
    array = array.astype(np.int64) if array.dtype.kind in "fb" else array
    dim = image.GetDimension()
    if dim == 3:
        spacing, origin = image.GetSpacing(), image.GetOrigin()
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        stack = [array] if array.ndim == 3 else [array[..., c] for c in range(array.shape[-1])]
    elif dim == 4:
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{path}: a 4D label image must have scalar voxels")
        spacing, origin = image.GetSpacing()[:3], image.GetOrigin()[:3]
        direction = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3]
        stack = [array[n] for n in range(array.shape[0])]  # array is [t, k, j, i]
    else:
        raise InputError(f"{path}: expected a 3D label image (or 3D layers), got a {dim}D image")
    layers = [Volume(np.ascontiguousarray(a), spacing, origin, direction) for a in stack]
    return LabelFile(layers, _segments(image, layers))


def _segments(image, layers: list[Volume]) -> list[Segment]:
    keys = set(image.GetMetaDataKeys())
    segments = []
    n = 0
    while f"Segment{n}_LabelValue" in keys or f"Segment{n}_Name" in keys:
        get = lambda field, default: image.GetMetaData(f"Segment{n}_{field}") if f"Segment{n}_{field}" in keys else default  # noqa: E731
        try:
            value = int(get("LabelValue", n + 1))
            layer = int(get("Layer", 0))
        except ValueError as exc:
            raise InputError(f"malformed segment {n} in the segmentation header: {exc}") from exc
        if not 0 <= layer < len(layers):
            raise InputError(f"segment {n} names layer {layer}, but the file has {len(layers)} layers")
        segments.append(Segment(get("Name", f"Segment_{n + 1}"), value, layer))
        n += 1
    if not segments:  # a plain label map: one segment per value
        for layer_index, layer in enumerate(layers):
            for value in np.unique(layer.array):
                if value != 0:
                    segments.append(Segment(f"label {int(value)}", int(value), layer_index))
    return segments


def mask_on_grid(mask: np.ndarray, source: Volume, target: Volume) -> np.ndarray:
    """A bool mask on `source`'s grid, moved onto `target`'s grid (nearest neighbour; exact when the
    grids coincide, as for a .seg.nrrd saved with its reference image's geometry)."""
    if source.same_geometry(target):
        return np.asarray(mask, dtype=bool)
    from .preprocess import resample_array

    return resample_array(mask.astype(np.float32), source, target, linear=False) > 0.5


def read_mask(path: str | os.PathLike, segment: str | int | None = None, reference: Volume | None = None) -> np.ndarray:
    """One segment of a label file as a bool mask [k, j, i], on `reference`'s grid when given."""
    labels = read_labels(path)
    mask = labels.mask(segment)
    if reference is not None:
        mask = mask_on_grid(mask, labels.grid, reference)
    return mask
