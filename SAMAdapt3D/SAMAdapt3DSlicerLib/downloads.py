"""Model files the user may download, and the download itself: consent first, progress, resume, checksums.

Qt-free and Slicer-free (standard library only), so Testing/test_downloads.py runs it against a local HTTP server on
127.0.0.1. The module runs `download` on a worker thread and shows its progress; nothing is fetched without the
user's yes (the widget asks with `consent_text`).

- Resume: the bytes arrive in `<name>.part`; a later call asks for the rest with an HTTP Range request (a server that
  ignores Range sends the whole file again and the part is restarted).
- Integrity: a published sha256 is checked; otherwise the sha256 of the first complete download is recorded in
  `sha256.json` beside the files (shown to the user) and later downloads of that file must match it.
- Never a partial file under the final name: the part is renamed only once complete and checked; a bad hash
  deletes it; an interruption or a cancel keeps it for resuming.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

#: bytes read per chunk (progress granularity, and how soon a cancel is seen)
CHUNK_BYTES = 1 << 20
#: seconds without data before a download counts as interrupted
READ_TIMEOUT_S = 60.0
PART_SUFFIX = ".part"
HASH_RECORD = "sha256.json"
USER_AGENT = "SAMAdapt3D-Slicer"

SAM_LICENCE = "Apache-2.0 (Meta's segment-anything release)"
SAM_3D_ADAPTER_LICENCE = ("no licence file in github.com/med-air/3DSAM-adapter (ask the authors before redistributing); "
                          "trained on KiTS 2021 / LiTS 2017 / MSD data, whose terms also apply")
SAM_3D_ADAPTER_PAGE = ("https://mycuhk-my.sharepoint.com/:f:/g/personal/1155187960_link_cuhk_edu_hk/"
                       "EgSZwTonMG1Cl_PA7wTP5zgBe-DU4K5rb0woDt3i8U22SA?e=0jmfkq")


@dataclass(frozen=True)
class ModelFile:
    """One published file. `url` is a direct download (None when the host needs a browser, e.g. OneDrive);
    `size_mb` is the approximate size for the consent dialog; `sha256` only when the publisher gives one."""
    key: str
    title: str
    filename: str
    kind: str  # "sam-base" | "3dsam-adapter"
    page: str
    licence: str
    size_mb: float | None
    url: str | None = None
    sha256: str | None = None
    note: str = ""

    @property
    def downloadable(self) -> bool:
        return self.url is not None


_FBAI = "https://dl.fbaipublicfiles.com/segment_anything/"
CATALOGUE: tuple[ModelFile, ...] = (
    ModelFile("sam_vit_b", "SAM ViT-B (base file for 3DSAM-adapter, SAMed, Med-SA)", "sam_vit_b_01ec64.pth",
              "sam-base", "https://github.com/facebookresearch/segment-anything#model-checkpoints", SAM_LICENCE, 375,
              _FBAI + "sam_vit_b_01ec64.pth", note="no sha256 published: recorded at the first download"),
    ModelFile("sam_vit_l", "SAM ViT-L", "sam_vit_l_0b3195.pth", "sam-base",
              "https://github.com/facebookresearch/segment-anything#model-checkpoints", SAM_LICENCE, 1250,
              _FBAI + "sam_vit_l_0b3195.pth", note="no sha256 published: recorded at the first download"),
    ModelFile("sam_vit_h", "SAM ViT-H (base file for MA-SAM, SAMed_h)", "sam_vit_h_4b8939.pth", "sam-base",
              "https://github.com/facebookresearch/segment-anything#model-checkpoints", SAM_LICENCE, 2560,
              _FBAI + "sam_vit_h_4b8939.pth", note="no sha256 published: recorded at the first download"),
) + tuple(
    ModelFile(f"3dsam_{task}", f"3DSAM-adapter, {label} (crop {crop})", f"3dsam_{task}_best.pth.tar", "3dsam-adapter",
              SAM_3D_ADAPTER_PAGE, SAM_3D_ADAPTER_LICENCE, None,
              note=f"OneDrive folder '{task}': download in a browser, then 'Add model file'; crop size {crop}")
    for task, label, crop in (("kits", "KiTS 2021 kidney tumour", 256), ("lits", "LiTS 2017 liver tumour", 128),
                              ("pancreas", "MSD pancreas tumour", 128), ("colon", "MSD colon cancer", 256))
)


def catalogue_entry(key: str) -> ModelFile:
    for entry in CATALOGUE:
        if entry.key == key:
            return entry
    raise KeyError(f"no model file {key!r}; known: {', '.join(e.key for e in CATALOGUE)}")


def consent_text(entry: ModelFile, folder: str) -> str:
    """What the user agrees to before a download starts."""
    size = f"about {entry.size_mb:,.0f} MB" if entry.size_mb else "size not published"
    check = f"sha256 {entry.sha256}" if entry.sha256 else "no published checksum (its sha256 is recorded and shown)"
    return (f"Download {entry.title}?\n\nFrom: {entry.url}\nSize: {size}\nLicence: {entry.licence}\nCheck: {check}\n"
            f"Saved to: {os.path.join(folder, entry.filename)}\n\nAn interrupted download resumes where it stopped.")


class DownloadError(Exception):
    """The download failed; the final file was not created (a resumable part may remain)."""


class DownloadCancelled(DownloadError):
    """Cancelled by the user; the part is kept, so the next download resumes."""


@dataclass
class DownloadResult:
    path: str
    sha256: str
    size: int
    resumed_from: int  # bytes already there when this call started (0: a fresh download)
    checked: str  # "published" | "recorded now" | "matches record"


ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


def _sha256_of(path: str) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest


def _records(folder: str) -> dict:
    path = os.path.join(folder, HASH_RECORD)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def recorded_sha256(folder: str, filename: str) -> str | None:
    """The sha256 recorded at the first download of `filename` into `folder` (None if never downloaded)."""
    entry = _records(folder).get(filename)
    return entry.get("sha256") if isinstance(entry, dict) else None


def _record(folder: str, filename: str, url: str, sha256: str, size: int) -> None:
    records = _records(folder)
    records[filename] = {"sha256": sha256, "size": size, "url": url}
    tmp = os.path.join(folder, HASH_RECORD + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(folder, HASH_RECORD))


def _open(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs from the catalogue
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # our part is not a prefix the server accepts: start again
            return None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: {getattr(exc, 'reason', exc)}") from exc


def download(url: str, folder: str, filename: str, expected_sha256: str | None = None,
             progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
             timeout: float = READ_TIMEOUT_S) -> DownloadResult:
    """Download `url` to `folder/filename` (resuming `filename.part`), checked as the module docstring says."""
    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, filename)
    part = final + PART_SUFFIX
    start = os.path.getsize(part) if os.path.isfile(part) else 0
    response = _open(url, start, timeout)
    if response is None:
        os.remove(part)
        start = 0
        response = _open(url, 0, timeout)
    with response:
        if start and response.status != 206:  # Range ignored: the whole file comes again
            start = 0
        elif start and not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
            raise DownloadError(f"{url}: the server resumed at an unexpected place "
                                f"({response.headers.get('Content-Range')!r}); delete {part} and retry")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        digest = _sha256_of(part) if start else hashlib.sha256()
        done = start
        try:
            with open(part, "ab" if start else "wb") as handle:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled(f"cancelled at {done} bytes; the next download resumes")
                    block = response.read(CHUNK_BYTES)
                    if not block:
                        break
                    handle.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except DownloadCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - http.client.IncompleteRead, resets, timeouts
            raise DownloadError(f"{url}: interrupted at {done} bytes ({exc}); the next download resumes") from exc
    if total is not None and done != total:
        raise DownloadError(f"{url}: interrupted at {done} of {total} bytes; the next download resumes")
    sha256 = digest.hexdigest()
    recorded = recorded_sha256(folder, filename)
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        os.remove(part)
        raise DownloadError(f"{filename}: sha256 {sha256} is not the published {expected_sha256}; file deleted")
    if expected_sha256 is None and recorded is not None and sha256 != recorded:
        os.remove(part)
        raise DownloadError(f"{filename}: sha256 {sha256} differs from the one recorded at its first download "
                            f"({recorded}); file deleted")
    os.replace(part, final)
    checked = "published" if expected_sha256 else ("matches record" if recorded else "recorded now")
    if expected_sha256 is None and recorded is None:
        _record(folder, filename, url, sha256, done)
    return DownloadResult(final, sha256, done, start, checked)


def download_entry(entry: ModelFile, folder: str, progress: ProgressCallback | None = None,
                   cancel: threading.Event | None = None) -> DownloadResult:
    if not entry.downloadable:
        raise DownloadError(f"{entry.title} has no direct download: {entry.note} ({entry.page})")
    return download(entry.url, folder, entry.filename, entry.sha256, progress, cancel)
