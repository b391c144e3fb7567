"""Reading image files safely: the header first, then the voxels.

Before any voxel is read: a folder is named as such (a DICOM series is said to be one), the declared
size (voxels x bytes per voxel, from the header alone) is checked against a limit, and a NIfTI file
whose data are shorter than its header declares is refused (ITK would zero-fill the missing part).
The limit is `DEFAULT_MAX_IMAGE_MB`, raised with the environment variable `MAX_IMAGE_MB_ENV` or, in the
command line, `--max-image-mb`.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

from .errors import InputError

#: declared voxel data allowed by default (a 512x512x1000 int16 CT is 500 MB; the pipeline holds a few float copies)
DEFAULT_MAX_IMAGE_MB = 2048.0
MAX_IMAGE_MB_ENV = "SAMADAPT3D_MAX_IMAGE_MB"
MAX_IMAGE_MB_OPTION = "--max-image-mb"
MB = 1024 * 1024
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_CHUNK = 1 << 20


def max_image_mb(given: float | None = None) -> float:
    """The size limit in MB: `given`, else the environment variable, else the default."""
    if given is None:
        text = os.environ.get(MAX_IMAGE_MB_ENV)
        if text is None or text.strip() == "":
            return DEFAULT_MAX_IMAGE_MB
        try:
            given = float(text)
        except ValueError:
            raise InputError(f"{MAX_IMAGE_MB_ENV}={text!r} is not a number of MB") from None
    if not given > 0 or given == float("inf"):
        raise InputError(f"the image size limit must be a positive number of MB, got {given:g}")
    return float(given)


def _article(what: str) -> str:
    return "an" if what[:1] in "aeiou" else "a"


def _last_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else str(exc)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """ITK's readers print their own diagnostics to file descriptor 2; the exception we raise says what
    went wrong, so hide them (used by the command line, which prints one line per error)."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def _refuse_folder(path: Path, what: str) -> None:
    import SimpleITK as sitk

    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    except RuntimeError:
        series = ()
    if series:
        raise InputError(f"{path} is a folder holding a DICOM series; DICOM series are not read: convert it to one "
                         "file first (e.g. load it in 3D Slicer and save it as .nrrd, or use dcm2niix)")
    raise InputError(f"{path} is a folder, not {_article(what)} {what} file")


def declared_bytes(reader) -> int:
    """Voxel data the header declares: voxels x components x bytes per component."""
    import SimpleITK as sitk

    count = 1
    for n in reader.GetSize():
        count *= int(n)
    component = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), 1).GetSizeOfPixelComponent()
    return count * int(reader.GetNumberOfComponents()) * int(component)


def _nifti_data_offset(head: bytes) -> int | None:
    """Where a single-file NIfTI-1/-2 puts its voxels (vox_offset), None for a header/image pair."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            return int(struct.unpack(order + "f", head[108:112])[0]) if head[344:347] == b"n+1" else None
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            return int(struct.unpack(order + "q", head[168:176])[0]) if head[4:7] == b"n+2" else None
    return None


def _available_length(path: Path, needed: int) -> int:
    """Bytes of the file's content up to `needed` (decompressed for .gz); a broken gzip stream stops the count."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while total < needed:
                block = handle.read(min(_GZIP_CHUNK, needed - total))
                if not block:
                    break
                total += len(block)
    except (EOFError, OSError, zlib.error):
        pass
    return total


def _check_complete(path: Path, reader, data_bytes: int, what: str) -> None:
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        return
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(544)
    except (EOFError, OSError, zlib.error):
        head = b""
    offset = _nifti_data_offset(head)
    if offset is None:
        return
    needed = offset + data_bytes
    have = _available_length(path, needed)
    if have < needed:
        raise InputError(f"{path} is truncated: its header declares {needed} bytes of {what} data but the file holds "
                         f"{have}")


def read_sitk_image(path: str | os.PathLike, what: str = "image", max_mb: float | None = None):
    """SimpleITK's image from a file, after the header checks above; every failure is an InputError naming it."""
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        _refuse_folder(path, what)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    limit = max_image_mb(max_mb)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _read_error(path, what, exc) from exc
    size = declared_bytes(reader)
    if size > limit * MB:
        raise InputError(f"{path} declares {size / MB:.0f} MB of voxels {tuple(reader.GetSize())}, over the "
                         f"{limit:g} MB limit; raise it with {MAX_IMAGE_MB_OPTION} or {MAX_IMAGE_MB_ENV} if the "
                         "machine has the memory")
    _check_complete(path, reader, size, what)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise _read_error(path, what, exc) from exc


def _read_error(path: Path, what: str, exc: RuntimeError) -> InputError:
    reason = _last_line(exc)
    if "No such file or directory" in reason or "does not exist" in reason:
        # the file is there: ITK says so when the data are cut short or a detached data file is missing
        reason = "the file is truncated, or names a data file that is missing"
    return InputError(f"cannot read {path} as {_article(what)} {what}: {reason}")
