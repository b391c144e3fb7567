"""Bad requests to `samadapt3d serve`, sent as raw HTTP: each is a 4xx with a message, and the server goes on
serving a session opened before them."""
import http.client
import json
from urllib.parse import urlsplit

import numpy as np
import pytest

from samadapt3d.client import ServerClient, ServerError, wire
from samadapt3d.errors import InputError
from samadapt3d.server.cli import config_from_args, build_parser, is_loopback
from samadapt3d.server.state import ServerConfig
from test_server import TOKEN, assert_same, both, toy_loader
from test_server_toymodels import serve_in_thread

MAX_VOXELS = 20_000


@pytest.fixture(scope="module")
def url():
    with serve_in_thread(ServerConfig(token=TOKEN, max_voxels=MAX_VOXELS), toy_loader) as address:
        yield address


def raw(url, method, path, body=b"", headers=None, token=TOKEN, client_id="raw"):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    all_headers = {"X-Client-Id": client_id, **(headers or {})}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=all_headers)
    response = conn.getresponse()
    status, data = response.status, json.loads(response.read() or b"{}")
    conn.close()
    return status, data


def message(data):
    return data["error"]["message"]


def upload_headers(shape, dtype="<f4"):
    return {wire.SHAPE_HEADER: ",".join(map(str, shape)), wire.DTYPE_HEADER: dtype}


def test_bad_requests_are_4xx_with_a_message_and_the_server_keeps_serving(url):
    client = ServerClient(url, token=TOKEN)
    remote, local = both(client)
    assert_same(remote, local, (remote.add_point((5, 5, 3)), local.add_point((5, 5, 3))))
    sid = remote.session_id
    image = np.ones((10, 10, 10), np.float32)
    good = wire.deflate(image.tobytes())
    image_id = wire.image_id(image.tobytes(), image.shape, "<f4")
    cases = [
        ("GET", "/info", b"", {}, None, 401, "needs a token"),
        ("GET", "/info", b"", {}, "wrong", 401, "wrong token"),
        ("POST", f"/sessions/{sid}/point", b"{not json", {}, TOKEN, 400, "malformed JSON"),
        ("POST", f"/sessions/{sid}/point", b"[1, 2]", {}, TOKEN, 400, "must be a JSON object"),
        ("POST", f"/sessions/{sid}/point", b'{"coord": "x"}', {}, TOKEN, 400, "'coord' must be list"),
        ("POST", f"/sessions/{sid}/point", b'{"coord": [1, 2]}', {}, TOKEN, 422, "3 coordinates"),
        ("POST", f"/sessions/{sid}/point", b'{"coord": [99, 0, 0]}', {}, TOKEN, 422, "outside the image"),
        ("POST", f"/sessions/{sid}/box", b'{"corner_a": [90, 90, 90], "corner_b": [99, 99, 99]}', {}, TOKEN, 422,
         "outside the image"),
        ("POST", f"/sessions/{sid}/remove_prompt", b'{"index": 7}', {}, TOKEN, 422, "no prompt 7"),
        ("POST", f"/sessions/{sid}/fly", b"{}", {}, TOKEN, 404, "unknown operation"),
        ("POST", "/sessions/not-a-session/point", b'{"coord": [1, 1, 1]}', {}, TOKEN, 404, "unknown session"),
        ("PUT", f"/images/{image_id}", good[:-10], upload_headers(image.shape), TOKEN, 422, "truncated"),
        ("PUT", f"/images/{image_id}", wire.deflate(bytes(4001)), upload_headers(image.shape), TOKEN, 422,
         "more than the declared"),
        ("PUT", f"/images/{'0' * 64}", good, upload_headers(image.shape), TOKEN, 400, "do not match their sha256"),
        ("PUT", f"/images/{image_id}", good, upload_headers((100, 100, 100)), TOKEN, 413, "--max-voxels"),
        ("PUT", f"/images/{image_id}", b"x" * 5000, upload_headers((1, 1, 10)), TOKEN, 413, "more than the"),
        ("PUT", f"/images/{image_id}", good, upload_headers((10, 10)), TOKEN, 422, "3 positive integers"),
        ("PUT", f"/images/{image_id}", good, upload_headers(image.shape, "<c8"), TOKEN, 400, "must be one of"),
        ("POST", f"/sessions/{sid}/seed", json.dumps({"seed": wire.encode_bits(np.ones((2, 2, 2), bool))}).encode(),
         {}, TOKEN, 422, "does not match the image"),
        ("POST", f"/sessions/{sid}/seed", json.dumps({"seed": {"shape": [14, 16, 18], "bits": "@@"}}).encode(),
         {}, TOKEN, 422, "not valid base64"),
        ("POST", "/models", b'{"name": "no-such-model"}', {}, TOKEN, 404, "unknown model"),
        ("POST", "/sessions", b'{"model_id": "nope"}', {}, TOKEN, 404, "unknown model"),
    ]
    for method, path, body, headers, token, status, text in cases:
        got, data = raw(url, method, path, body, headers, token, client.transport.client_id)
        assert (got, text) == (status, text) and text in message(data), (method, path, data)
    # the server still serves the session, which none of the refused requests changed
    assert_same(remote, local, (remote.add_point((12, 12, 10)), local.add_point((12, 12, 10))))
    assert raw(url, "PUT", f"/images/{image_id}", good, upload_headers(image.shape))[0] == 200


def test_a_client_sees_only_its_own_sessions(url):
    owner, other = ServerClient(url, token=TOKEN), ServerClient(url, token=TOKEN)
    remote, _ = both(owner)
    assert [s["session_id"] for s in owner.sessions()] == [remote.session_id]
    assert other.sessions() == []
    with pytest.raises(ServerError, match="unknown session") as info:
        other.call("POST", f"/sessions/{remote.session_id}/undo", {})
    assert info.value.status == 404
    with pytest.raises(ServerError, match="unknown session"):
        other.call("DELETE", f"/sessions/{remote.session_id}")
    assert remote.add_point((5, 5, 3)).any()


def test_client_side_errors_match_the_session(url):
    client = ServerClient(url, token=TOKEN)
    remote = client.open_session(client.load_model("toy-crop", device="cpu"))
    with pytest.raises(InputError, match="no image"):
        remote.add_point((1, 1, 1))
    with pytest.raises(InputError, match="no image"):
        _ = remote.mask
    with pytest.raises(InputError, match="expects a samadapt3d Volume"):
        remote.set_image(np.zeros((3, 3, 3)))
    with pytest.raises(ServerError, match="not reachable|stopped answering"):
        ServerClient("http://127.0.0.1:9", timeout=2).health()  # nothing listens on the discard port


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    parser = build_parser()
    with pytest.raises(InputError, match="without a token"):
        config_from_args(parser.parse_args(["--host", "0.0.0.0"]))
    token_file = tmp_path / "token"
    config = config_from_args(parser.parse_args(["--host", "0.0.0.0", "--token-file", str(token_file)]))
    assert len(config.token) >= 32 and token_file.read_text().strip() == config.token
    assert token_file.stat().st_mode & 0o077 == 0  # owner-only
    assert config_from_args(parser.parse_args(["--token-file", str(token_file)])).token == config.token
    token_file.write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        config_from_args(parser.parse_args(["--token-file", str(token_file)]))
    with pytest.raises(InputError, match="--max-sessions"):
        config_from_args(parser.parse_args(["--max-sessions", "0"]))
