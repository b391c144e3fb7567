"""Volume: a 3D array with its geometry, and the one definition of IJK / LPS / RAS.

Conventions (used everywhere in samadapt3d and the Slicer module):
- `array` is indexed [k, j, i] (SimpleITK's GetArrayFromImage order); i is the fastest axis.
- An index (i, j, k) is in ITK order, as SimpleITK's GetPixel; voxel centres are integers.
- Physical points are LPS (ITK, DICOM) or RAS (Slicer); RAS = LPS with x and y negated.
- lps = origin + direction @ (spacing * ijk), `direction` columns being the i, j, k axes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SPACES = ("ijk", "lps", "ras")


def _vec3(values, what: str) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if out.shape != (3,) or not np.all(np.isfinite(out)):
        raise InputError(f"{what} must be 3 finite numbers, got {values!r}")
    return out


@dataclass(eq=False)
class Volume:
    array: np.ndarray
    spacing: np.ndarray  # (si, sj, sk) mm
    origin: np.ndarray  # LPS mm, centre of voxel (0, 0, 0)
    direction: np.ndarray  # 3x3, column c = LPS direction of index axis c

    def __init__(self, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> None:
        array = np.asarray(array)
        if array.ndim != 3:
            raise InputError(f"a volume must be 3D, got an array with {array.ndim} dimensions {array.shape}")
        if min(array.shape) < 1:
            raise InputError(f"a volume must not be empty, got shape {array.shape}")
        self.array = array
        self.spacing = _vec3(spacing, "spacing")
        if np.any(self.spacing <= 0):
            raise InputError(f"spacing must be positive, got {tuple(self.spacing)}")
        self.origin = _vec3(origin, "origin")
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
            raise InputError(f"direction must be an invertible 3x3 matrix, got {direction.tolist()}")
        self.direction = direction

    # ---- geometry -------------------------------------------------------------------------
    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along (i, j, k)."""
        k, j, i = self.array.shape
        return (i, j, k)

    def ijk_to_lps_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to (L, P, S, 1)."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing[None, :]
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) to (R, A, S, 1), as Slicer's IJKToRAS."""
        m = self.ijk_to_lps_matrix()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    def index_to_physical(self, ijk, space: str = "lps") -> np.ndarray:
        pts = np.asarray(ijk, dtype=np.float64)
        flat = pts.reshape(-1, 3)
        matrix = self.ijk_to_ras_matrix() if space == "ras" else self.ijk_to_lps_matrix()
        _check_space(space, allow_ijk=False)
        out = flat @ matrix[:3, :3].T + matrix[:3, 3]
        return out.reshape(pts.shape)

    def physical_to_index(self, xyz, space: str = "lps") -> np.ndarray:
        """Continuous (i, j, k) index of physical points (not rounded, not bounds-checked)."""
        _check_space(space, allow_ijk=False)
        pts = np.asarray(xyz, dtype=np.float64)
        flat = pts.reshape(-1, 3)
        matrix = self.ijk_to_ras_matrix() if space == "ras" else self.ijk_to_lps_matrix()
        out = np.linalg.solve(matrix[:3, :3], (flat - matrix[:3, 3]).T).T
        return out.reshape(pts.shape)

    def to_index(self, coords, space: str) -> np.ndarray:
        """Continuous (i, j, k) of points given in `space` ("ijk", "lps" or "ras")."""
        _check_space(space, allow_ijk=True)
        if space == "ijk":
            return np.asarray(coords, dtype=np.float64)
        return self.physical_to_index(coords, space)

    def contains_index(self, ijk) -> np.ndarray:
        """True for indices whose nearest voxel lies inside the image."""
        pts = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        size = np.asarray(self.size_ijk)
        return np.all((pts > -0.5) & (pts < size - 0.5), axis=1)

    def same_geometry(self, other: "Volume", tol: float = 1e-4) -> bool:
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, other voxels (e.g. a mask)."""
        if array.shape != self.array.shape:
            raise InputError(f"array shape {array.shape} does not match the volume's {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    # ---- SimpleITK and files --------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> "Volume":
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise InputError(f"expected a 3D image, got a {image.GetDimension()}D image of size {image.GetSize()}")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel"
            )
        return cls(
            sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.asarray(image.GetDirection()).reshape(3, 3),
        )

    def to_sitk(self, array: np.ndarray | None = None):
        import SimpleITK as sitk

        data = self.array if array is None else array
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        image = sitk.GetImageFromArray(data)
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return image

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_mb: float | None = None) -> "Volume":
        """Read NIfTI, NRRD, MHA, ... through SimpleITK; errors name the file and the problem. The header is
        checked first (declared size within `max_mb`, see image_files.max_image_mb; data not truncated)."""
        path = Path(path)
        image = read_sitk_image(path, "image", max_mb)
        try:
            return cls.from_sitk(image)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from exc

    def save(self, path: str | os.PathLike, array: np.ndarray | None = None) -> None:
        """Write this geometry with `array` (default: own voxels); atomic: no half-written file."""
        write_image_atomic(self.to_sitk(array), path)


def read_sitk_image(path: str | os.PathLike, what: str = "image", max_mb: float | None = None):
    """SimpleITK's image from a file; a missing, truncated, oversized or unreadable file is an InputError naming it."""
    from .image_files import read_sitk_image as read

    return read(path, what, max_mb)


def check_float32_range(array: np.ndarray, what: str = "the image") -> None:
    """The models compute in float32: finite float64 values beyond its range would become Inf there."""
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        finite = array[np.isfinite(array)]
        peak = float(np.max(np.abs(finite))) if finite.size else 0.0
        if peak > float(np.finfo(np.float32).max):
            raise InputError(f"{what} holds values up to {peak:g} in magnitude, beyond the float32 range "
                             f"(about {float(np.finfo(np.float32).max):.1e}) the models compute in; rescale it first")


def write_image_atomic(image, path: str | os.PathLike) -> None:
    """Write a SimpleITK image to a temporary name beside `path`, then rename: no half-written file."""
    import SimpleITK as sitk

    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    tmp = path.with_name(f".{path.stem}.partial{suffix}")
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        os.replace(tmp, path)
    except RuntimeError as exc:
        raise InputError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_space(space: str, allow_ijk: bool) -> None:
    allowed = SPACES if allow_ijk else SPACES[1:]
    if space not in allowed:
        raise InputError(f"unknown coordinate space {space!r}; choose one of {', '.join(allowed)}")
