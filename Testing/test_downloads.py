"""Model downloads against a real HTTP server on 127.0.0.1: resume (Range), bad hash, interruption, cancel, no
partial file left under the final name, sha256 recorded at the first download when none is published."""
from __future__ import annotations

import hashlib
import http.server
import os
import threading

import pytest

from SAMAdapt3DSlicerLib import downloads

PAYLOAD = os.urandom(5 * downloads.CHUNK_BYTES + 12345)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.payload` at /file; `server.cut_after` bytes then drops the connection (once);
    `server.honour_range` False answers every request with the whole file."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        srv = self.server
        srv.requests.append(dict(path=self.path, range=self.headers.get("Range")))
        if self.path != "/file":
            self.send_error(404)
            return
        data, start = srv.payload, 0
        wanted = self.headers.get("Range")
        if wanted and srv.honour_range:
            start = int(wanted.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            self.wfile.write(body[: srv.cut_after])
            srv.cut_after = None
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-file
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.payload, srv.cut_after, srv.honour_range, srv.requests = PAYLOAD, None, True, []
    thread = threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/file"
    yield srv
    srv.shutdown()
    srv.server_close()


def files(folder):
    return sorted(os.listdir(folder))


def test_full_download_with_published_hash(server, tmp_path):
    seen = []
    result = downloads.download(server.url, str(tmp_path), "m.pth", PAYLOAD_SHA, progress=lambda d, t: seen.append((d, t)))
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD
    assert result.sha256 == PAYLOAD_SHA and result.checked == "published" and result.resumed_from == 0
    assert files(tmp_path) == ["m.pth"]  # no part, no record (the hash is published)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_bad_hash_leaves_nothing(server, tmp_path):
    with pytest.raises(downloads.DownloadError, match="not the published"):
        downloads.download(server.url, str(tmp_path), "m.pth", "0" * 64)
    assert files(tmp_path) == []


def test_interruption_then_resume_with_range(server, tmp_path):
    cut = 2 * downloads.CHUNK_BYTES + 777
    server.cut_after = cut
    with pytest.raises(downloads.DownloadError, match="interrupted"):
        downloads.download(server.url, str(tmp_path), "m.pth", PAYLOAD_SHA)
    assert files(tmp_path) == ["m.pth.part"]  # never a partial file under the final name
    assert (tmp_path / "m.pth.part").read_bytes() == PAYLOAD[:cut]
    result = downloads.download(server.url, str(tmp_path), "m.pth", PAYLOAD_SHA)
    assert server.requests[-1]["range"] == f"bytes={cut}-"
    assert result.resumed_from == cut and result.sha256 == PAYLOAD_SHA
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD and files(tmp_path) == ["m.pth"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    (tmp_path / "m.pth.part").write_bytes(PAYLOAD[:1000])
    server.honour_range = False
    result = downloads.download(server.url, str(tmp_path), "m.pth", PAYLOAD_SHA)
    assert result.resumed_from == 0 and (tmp_path / "m.pth").read_bytes() == PAYLOAD


def test_corrupt_part_is_caught_by_the_hash(server, tmp_path):
    (tmp_path / "m.pth.part").write_bytes(b"x" * 1000)  # not a prefix of the file: resume gives a wrong file
    with pytest.raises(downloads.DownloadError, match="sha256"):
        downloads.download(server.url, str(tmp_path), "m.pth", PAYLOAD_SHA)
    assert files(tmp_path) == []
    assert downloads.download(server.url, str(tmp_path), "m.pth", PAYLOAD_SHA).sha256 == PAYLOAD_SHA


def test_cancel_keeps_the_part_for_resuming(server, tmp_path):
    cancel = threading.Event()

    def progress(done, total):
        if done >= 2 * downloads.CHUNK_BYTES:
            cancel.set()

    with pytest.raises(downloads.DownloadCancelled):
        downloads.download(server.url, str(tmp_path), "m.pth", PAYLOAD_SHA, progress=progress, cancel=cancel)
    assert files(tmp_path) == ["m.pth.part"]
    kept = (tmp_path / "m.pth.part").stat().st_size
    assert 0 < kept < len(PAYLOAD)
    result = downloads.download(server.url, str(tmp_path), "m.pth", PAYLOAD_SHA)
    assert result.resumed_from == kept and (tmp_path / "m.pth").read_bytes() == PAYLOAD


def test_unpublished_hash_is_recorded_then_enforced(server, tmp_path):
    first = downloads.download(server.url, str(tmp_path), "m.pth")
    assert first.checked == "recorded now" and downloads.recorded_sha256(str(tmp_path), "m.pth") == PAYLOAD_SHA
    os.remove(tmp_path / "m.pth")
    assert downloads.download(server.url, str(tmp_path), "m.pth").checked == "matches record"
    os.remove(tmp_path / "m.pth")
    server.payload = PAYLOAD[::-1]  # the host now serves different bytes under that name
    with pytest.raises(downloads.DownloadError, match="recorded"):
        downloads.download(server.url, str(tmp_path), "m.pth")
    assert files(tmp_path) == [downloads.HASH_RECORD]


def test_http_error_writes_nothing(server, tmp_path):
    with pytest.raises(downloads.DownloadError, match="404"):
        downloads.download(server.url.replace("/file", "/missing"), str(tmp_path), "m.pth")
    assert files(tmp_path) == []


def test_catalogue_lists_source_size_and_licence():
    keys = {e.key for e in downloads.CATALOGUE}
    assert {"sam_vit_b", "sam_vit_h", "3dsam_kits", "3dsam_lits", "3dsam_pancreas", "3dsam_colon"} <= keys
    for entry in downloads.CATALOGUE:
        assert entry.page.startswith("https://") and entry.licence
        assert entry.url is None or entry.url.startswith("https://")
        assert len({e.filename for e in downloads.CATALOGUE}) == len(downloads.CATALOGUE)
    text = downloads.consent_text(downloads.catalogue_entry("sam_vit_b"), "/models")
    assert "375 MB" in text and "Apache-2.0" in text and "recorded" in text
    with pytest.raises(downloads.DownloadError, match="browser"):
        downloads.download_entry(downloads.catalogue_entry("3dsam_kits"), "/nonexistent")
