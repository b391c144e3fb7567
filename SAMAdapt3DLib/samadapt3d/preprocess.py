"""Model presets: axis order, spacing and intensity normalisation of what a model sees.

Model space convention (one definition, used everywhere): a volume is reoriented with ITK's
orientation code `Preset.orientation` (the anatomical direction each of i, j, k increases toward,
e.g. "LPS"; None keeps the acquisition order), resampled to `Preset.spacing` (given in (D, H, W)
order, None keeps the native grid), and read as a numpy array [D, H, W] = [k, j, i].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .boxed import BoxedArray


#: The one orientation 2D slice models see, whatever the file's direction matrix (ITK code, `parse_orientation`):
#: "RAS", nibabel's canonical RAS+ voxel order, the layout of most public NIfTI CT data sets (what LiteMedSAM's
#: training slices look like when read with SimpleITK): an axial slice [rows, cols] runs posterior -> anterior and
#: patient left -> right. Measured against the radiological "LPI" in docs/LITEMEDSAM.md.
CANONICAL_SLICE_ORIENTATION = "RAS"


@dataclass(frozen=True)
class Preset:
    name: str
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)  # mm, (D, H, W) order
    orientation: str | None = "LPS"  # ITK code of axes (i, j, k) = (W, H, D)
    clip: tuple[float, float] | None = None
    normalization: str = "zscore"  # "zscore" (fixed mean/std, else per volume), "minmax", "none"
    mean: float | None = None
    std: float | None = None

    def normalize(self, array: np.ndarray) -> np.ndarray:
        """Clip then normalise intensities; returns float32."""
        out = np.asarray(array, dtype=np.float32)
        if self.clip is not None:
            out = np.clip(out, self.clip[0], self.clip[1])
        if self.normalization == "zscore":
            mean = float(out.mean()) if self.mean is None else self.mean
            std = float(out.std()) if self.std is None else self.std
            out = (out - mean) / max(std, 1e-8)
        elif self.normalization == "minmax":
            lo, hi = (self.clip if self.clip is not None else (float(out.min()), float(out.max())))
            out = (out - lo) / max(hi - lo, 1e-8)
        elif self.normalization != "none":
            raise ValueError(f"unknown normalization {self.normalization!r}")
        return out.astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preset":
        data = dict(data)
        for key in ("spacing", "clip"):
            if data.get(key) is not None:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)


# ---- model space ------------------------------------------------------------------------------
# Everything below maps a Volume into a preset's model space and back. Reorientation is an exact
# permutation/flip of the voxel array (no interpolation); resampling (only when the preset asks
# for another spacing) is linear for intensities and probabilities.

_AXIS_OF_LETTER = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def parse_orientation(code: str) -> tuple[tuple[int, float], ...]:
    """ITK/DICOM orientation code (e.g. "LPS", "RAS", "PIL") -> per index axis (LPS axis, sign)."""
    letters = str(code).upper()
    if len(letters) != 3 or any(c not in _AXIS_OF_LETTER for c in letters):
        raise ValueError(f"orientation code must be 3 letters from L/R, P/A, S/I, got {code!r}")
    parsed = tuple(_AXIS_OF_LETTER[c] for c in letters)
    if len({axis for axis, _ in parsed}) != 3:
        raise ValueError(f"orientation code {code!r} names an anatomical axis twice")
    return parsed


def closest_orientation(direction: np.ndarray) -> str:
    """The orientation code nearest to a (possibly oblique) direction matrix, as DICOMOrient picks."""
    perm = _closest_permutation(direction)
    names = ("LR", "PA", "SI")
    return "".join(names[p][0 if direction[p, c] > 0 else 1] for c, p in enumerate(perm))


def _closest_permutation(direction: np.ndarray) -> tuple[int, int, int]:
    """perm[c] = the LPS axis index axis c points along most (one-to-one, best total alignment)."""
    import itertools

    weights = np.abs(np.asarray(direction, dtype=np.float64))
    return max(itertools.permutations(range(3)), key=lambda p: sum(weights[p[c], c] for c in range(3)))


@dataclass(frozen=True)
class AxisMap:
    """An exact reorientation: new index axis a is old index axis `source[a]`, reversed if `flip[a]`."""

    source: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    size_in: tuple[int, int, int]  # old (i, j, k) sizes

    @classmethod
    def identity(cls, size_ijk) -> "AxisMap":
        return cls((0, 1, 2), (False, False, False), tuple(int(v) for v in size_ijk))

    @classmethod
    def to_orientation(cls, volume, code: str | None) -> "AxisMap":
        if code is None:
            return cls.identity(volume.size_ijk)
        perm = _closest_permutation(volume.direction)  # old axis c -> LPS axis perm[c]
        source, flip = [], []
        for lps_axis, sign in parse_orientation(code):
            c = perm.index(lps_axis)
            source.append(c)
            flip.append(bool(np.sign(volume.direction[lps_axis, c]) != sign))
        return cls(tuple(source), tuple(flip), tuple(int(v) for v in volume.size_ijk))

    @property
    def is_identity(self) -> bool:
        return self.source == (0, 1, 2) and not any(self.flip)

    @property
    def size_out(self) -> tuple[int, int, int]:
        return tuple(self.size_in[c] for c in self.source)

    def forward_array(self, array: np.ndarray) -> np.ndarray:
        """Old array [k, j, i] -> new array [k', j', i'] (a view when possible)."""
        # array axis of index axis c is 2 - c
        out = np.transpose(array, [2 - self.source[2 - n] for n in range(3)])
        flips = [2 - a for a in range(3) if self.flip[a]]
        return np.flip(out, axis=flips) if flips else out

    def inverse_array(self, array: np.ndarray) -> np.ndarray:
        flips, inverse = self._inverse_axes()
        out = np.flip(array, axis=flips) if flips else array
        return np.transpose(out, inverse)

    def _inverse_axes(self) -> tuple[list[int], list[int]]:
        """`inverse_array`'s steps: the new array's axes to reverse, then the transposition (old array axis n is
        new array axis inverse[n])."""
        flips = [2 - a for a in range(3) if self.flip[a]]
        inverse = [0, 0, 0]
        for n in range(3):  # new array axis n holds old array axis 2 - source[2 - n]
            inverse[2 - self.source[2 - n]] = n
        return flips, inverse

    def inverse_boxed(self, boxed: BoxedArray) -> BoxedArray:
        """`inverse_array` of `boxed.full()`, held as a box: only the box is re-oriented (exact)."""
        flips, inverse = self._inverse_axes()
        data = np.ascontiguousarray(self.inverse_array(boxed.data))
        data.setflags(write=False)
        shape = tuple(boxed.shape[a] for a in inverse)
        if data.size == 0:
            return BoxedArray(shape, (0, 0, 0), data)
        start = tuple(boxed.shape[a] - boxed.start[a] - boxed.data.shape[a] if a in flips else boxed.start[a]
                      for a in inverse)
        return BoxedArray(shape, start, data)

    def forward_index(self, ijk) -> np.ndarray:
        pts = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        out = np.empty_like(pts)
        for a, c in enumerate(self.source):
            out[:, a] = (self.size_in[c] - 1 - pts[:, c]) if self.flip[a] else pts[:, c]
        return out

    def inverse_index(self, ijk) -> np.ndarray:
        pts = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        out = np.empty_like(pts)
        for a, c in enumerate(self.source):
            out[:, c] = (self.size_in[c] - 1 - pts[:, a]) if self.flip[a] else pts[:, a]
        return out

    def forward_volume(self, volume):
        """The same physical image with reordered axes: exact, no interpolation."""
        from .volume import Volume

        corner = self.inverse_index(np.zeros(3))[0]  # old index of the new voxel (0, 0, 0)
        direction = np.stack(
            [volume.direction[:, c] * (-1.0 if self.flip[a] else 1.0) for a, c in enumerate(self.source)], axis=1
        )
        spacing = [volume.spacing[c] for c in self.source]
        origin = volume.index_to_physical(corner, "lps")
        return Volume(np.ascontiguousarray(self.forward_array(volume.array)), spacing, origin, direction)


def resampled_grid(volume, spacing_ijk) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """A grid with `spacing_ijk` covering the same extent as `volume` (same direction, centred):
    returns (spacing, origin, size_ijk)."""
    old_spacing = np.asarray(volume.spacing, dtype=np.float64)
    new_spacing = np.asarray(spacing_ijk, dtype=np.float64)
    old_size = np.asarray(volume.size_ijk, dtype=np.float64)
    size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
    # centre of new voxel 0, in old continuous index: extents centred on each other
    start = ((old_size * old_spacing - size * new_spacing) / 2 + new_spacing / 2 - old_spacing / 2) / old_spacing
    origin = volume.index_to_physical(start, "lps")
    return new_spacing, origin, tuple(int(v) for v in size)


def resample_array(array: np.ndarray, source, target, linear: bool = True, default: float = 0.0) -> np.ndarray:
    """Resample `array` on the grid of Volume `source` onto the grid of Volume `target` (float32)."""
    import SimpleITK as sitk

    image = source.to_sitk(np.asarray(array, dtype=np.float32))
    reference = target.to_sitk(np.zeros(target.array.shape, dtype=np.uint8))
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


#: integers up to this magnitude are exact in float32 (its 24-bit significand)
FLOAT32_EXACT_INT = 2 ** 24


def exact_in_float32(array: np.ndarray) -> bool:
    """Integers that float32 holds exactly (16 bits or less, or wider ones within +-2**24): such an array may stay
    as it is, with no float32 copy of the volume, and be converted slice by slice."""
    if not np.issubdtype(array.dtype, np.integer):
        return False
    if array.dtype.itemsize <= 2 or array.size == 0:
        return True
    return -FLOAT32_EXACT_INT <= int(array.min()) and int(array.max()) <= FLOAT32_EXACT_INT


class ModelSpace:
    """A volume mapped into a preset's model space, and the exact way back.

    `image` is the normalised model-space array [D, H, W]: float32, or the volume's own integers where float32 holds
    them exactly (`exact_in_float32`) and the preset neither resamples, clips nor normalises (LiteMedSAM: each slice is
    normalised by the model); `grid` its geometry as a Volume (array = image). Indices in the original volume are
    (i, j, k); in model space (d, h, w) = (k', j', i').
    """

    def __init__(self, volume, preset: Preset) -> None:
        from .volume import Volume

        self.volume = volume
        self.preset = preset
        self.axis_map = AxisMap.to_orientation(volume, preset.orientation)
        raw = preset.normalization == "none" and preset.clip is None and exact_in_float32(np.asarray(volume.array))
        array = np.asarray(volume.array) if raw else np.asarray(volume.array, dtype=np.float32)
        self.oriented = self.axis_map.forward_volume(Volume(array, volume.spacing, volume.origin, volume.direction))
        self.resampled = False
        grid = self.oriented
        if preset.spacing is not None:
            target = np.asarray(preset.spacing, dtype=np.float64)[::-1]  # (D, H, W) -> (i, j, k)
            if not np.allclose(target, self.oriented.spacing, rtol=1e-6, atol=1e-9):
                spacing, origin, size = resampled_grid(self.oriented, target)
                shell = Volume(np.zeros(size[::-1], dtype=np.uint8), spacing, origin, self.oriented.direction)
                data = resample_array(self.oriented.array, self.oriented, shell, linear=True,
                                      default=float(self.oriented.array.min()))
                grid = shell.with_array(data)
                self.resampled = True
        # resampled: float32 already; raw: the integers as they are (normalize would copy them to float32)
        self.grid = grid if raw and not self.resampled else grid.with_array(preset.normalize(grid.array))

    @property
    def image(self) -> np.ndarray:
        return self.grid.array

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.grid.array.shape)

    # ---- coordinates --------------------------------------------------------------------------
    def index_to_model(self, ijk) -> np.ndarray:
        """Original continuous (i, j, k) -> model continuous (d, h, w), clamped into the model grid."""
        pts = self.axis_map.forward_index(ijk)
        if self.resampled:
            pts = self.grid.physical_to_index(self.oriented.index_to_physical(pts, "lps"), "lps")
        dhw = pts[:, ::-1]
        return np.clip(dhw, 0.0, np.asarray(self.shape, dtype=np.float64) - 1.0)

    def model_to_index(self, dhw) -> np.ndarray:
        pts = np.asarray(dhw, dtype=np.float64).reshape(-1, 3)[:, ::-1]
        if self.resampled:
            pts = self.oriented.physical_to_index(self.grid.index_to_physical(pts, "lps"), "lps")
        return self.axis_map.inverse_index(pts)

    def axis_to_model(self, ijk_axis: int | None) -> int | None:
        """The model axis (0 = D, 1 = H, 2 = W) along original index axis `ijk_axis`."""
        if ijk_axis is None:
            return None
        return 2 - self.axis_map.source.index(int(ijk_axis))

    # ---- arrays -------------------------------------------------------------------------------
    def to_model(self, array_kji: np.ndarray, linear: bool = True) -> np.ndarray:
        """An array on the original grid -> float32 on the model grid."""
        oriented = np.ascontiguousarray(self.axis_map.forward_array(np.asarray(array_kji, dtype=np.float32)))
        if not self.resampled:
            return oriented
        return resample_array(oriented, self.oriented, self.grid, linear=linear)

    def mask_to_model(self, mask_kji: np.ndarray) -> np.ndarray:
        return self.to_model(np.asarray(mask_kji, dtype=np.float32)) > 0.5

    def mask_from_model(self, mask_dhw: np.ndarray) -> np.ndarray:
        """A bool model-grid mask -> bool on the original grid [k, j, i]: the same voxels when not resampled (no
        float copy: a preview of a 512 x 512 x 300 mask costs one bool pass), else the linear resampling > 0.5."""
        if self.resampled:
            return self.from_model(mask_dhw, linear=True) > 0.5
        return np.ascontiguousarray(self.axis_map.inverse_array(np.asarray(mask_dhw, dtype=bool)))

    def from_model(self, array_dhw: np.ndarray, linear: bool = True) -> np.ndarray:
        """A model-grid array -> float32 on the original grid [k, j, i] (exact when not resampled).
        Zero outside the model grid; when resampling, only the region around the non-zero voxels is
        interpolated (the rest is zero anyway), which keeps clicks fast on large images."""
        data = np.asarray(array_dhw, dtype=np.float32)
        if self.resampled:
            data = self._resample_back(data, linear)
        return np.ascontiguousarray(self.axis_map.inverse_array(data))

    def boxed_from_model(self, array_dhw: np.ndarray, linear: bool = True) -> BoxedArray:
        """`from_model`, held as its nonzero box. When not resampled the box is taken on the model grid and only
        it is re-oriented, so no volume-sized float32 copy is made (300 MiB on a 512 x 512 x 300 CT)."""
        if self.resampled:
            return BoxedArray.of(self.from_model(array_dhw, linear))
        return self.axis_map.inverse_boxed(BoxedArray.of(np.asarray(array_dhw, dtype=np.float32)))

    def _resample_back(self, data: np.ndarray, linear: bool) -> np.ndarray:
        from .volume import Volume

        out = np.zeros(self.oriented.array.shape, dtype=np.float32)
        nonzero = np.argwhere(data != 0)
        if len(nonzero) == 0:
            return out
        lo, hi = nonzero.min(axis=0) - 1, nonzero.max(axis=0) + 1  # (d, h, w), one voxel of margin
        corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)], float)
        ijk = self.oriented.physical_to_index(self.grid.index_to_physical(corners[:, ::-1], "lps"), "lps")
        size = np.asarray(self.oriented.size_ijk)
        start = np.clip(np.floor(ijk.min(axis=0)) - 1, 0, size - 1).astype(int)
        stop = np.clip(np.ceil(ijk.max(axis=0)) + 2, 1, size).astype(int)
        if np.any(stop <= start):
            return out
        region = Volume(np.zeros(tuple((stop - start)[::-1]), dtype=np.uint8), self.oriented.spacing,
                        self.oriented.index_to_physical(start, "lps"), self.oriented.direction)
        out[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = resample_array(data, self.grid, region,
                                                                                   linear=linear)
        return out


# ---- crops -------------------------------------------------------------------------------------
def extract_crop(array: np.ndarray, start, size, pad_value: float = 0.0) -> np.ndarray:
    """array[start : start + size] along each axis, padded with `pad_value` where it leaves the array."""
    start = np.asarray(start, dtype=int)
    size = np.asarray(size, dtype=int)
    out = np.full(tuple(size), pad_value, dtype=array.dtype)
    src, dst = _overlap(array.shape, start, size)
    if src is not None:
        out[dst] = array[src]
    return out


def paste_max(target: np.ndarray, crop: np.ndarray, start) -> None:
    """target[start : start + crop.shape] = max(target, crop), ignoring what falls outside target."""
    src, dst = _overlap(target.shape, np.asarray(start, dtype=int), np.asarray(crop.shape, dtype=int))
    if src is not None:
        target[src] = np.maximum(target[src], crop[dst])


def _overlap(shape, start, size):
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size, np.asarray(shape))
    if np.any(hi <= lo):
        return None, None
    src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    return src, dst
