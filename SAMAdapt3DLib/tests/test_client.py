"""The client without torch, and the local launcher: a real `python -m samadapt3d serve` child, killed
mid-request, restarted, the session rebuilt from its history, the next click as in process."""
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from samadapt3d.client import LocalServer, ServerError
from samadapt3d.server.state import ServerConfig
from samadapt3d.session import InteractiveSession
from test_server import TOKEN, assert_same, toy_loader, volume
from test_server_toymodels import serve_in_thread
from test_session_toymodel import ToyCropModel

TESTS = Path(__file__).resolve().parent
LIB = TESTS.parent

BLOCK_TORCH = "import sys\nsys.modules['torch'] = None  # `import torch` now raises ImportError\n"


def test_client_imports_and_works_without_torch(tmp_path):
    vol = volume()
    local = InteractiveSession(ToyCropModel())
    local.set_image(vol)
    want = [local.add_point((5, 5, 3)), local.add_point((12, 12, 10), positive=False), local.undo()]
    np.save(tmp_path / "image.npy", vol.array)
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import numpy as np
        from samadapt3d.client import LocalServer, RemoteSession, ServerClient, ServerError
        from samadapt3d.volume import Volume
        vol = Volume(np.load(sys.argv[2]), {vol.spacing.tolist()}, {vol.origin.tolist()}, {vol.direction.tolist()})
        client = ServerClient(sys.argv[1], token={TOKEN!r})
        s = client.open_session(client.load_model("toy-crop", device="cpu"))
        s.set_image(vol)
        masks = [s.add_point((5, 5, 3)), s.add_point((12, 12, 10), positive=False), s.undo()]
        np.save(sys.argv[3], np.stack(masks))
        print("loaded:", sorted(m for m, mod in sys.modules.items()
                                if mod is not None and m.split(".")[0] in ("torch", "fastapi", "uvicorn")))
    """)
    with serve_in_thread(ServerConfig(token=TOKEN), toy_loader) as url:
        run = subprocess.run([sys.executable, "-c", script, url, str(tmp_path / "image.npy"),
                              str(tmp_path / "masks.npy")], capture_output=True, text=True, timeout=60, cwd=LIB)
    assert run.returncode == 0, run.stderr
    assert "loaded: []" in run.stdout  # neither torch nor the server's packages
    got = np.load(tmp_path / "masks.npy")
    assert len(got) == 3 and all(np.array_equal(g, w) for g, w in zip(got, want))


def _launcher(**kw):
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), str(LIB), os.environ.get("PYTHONPATH", "")])}
    return LocalServer(device="cpu", extra_args=("--model-family", "test_server_toymodels"), env=env, **kw)


def test_launcher_restarts_a_killed_server_and_the_session_replays_its_history():
    vol = volume()
    local = InteractiveSession(ToyCropModel())  # the slow model's masks, without its wait
    local.set_image(vol)
    local.set_seed_mask(vol.array == 300)
    with _launcher() as server:
        first_pid, client = server.process.pid, server.client
        remote = client.open_session(client.load_model("toy-slow"))
        remote.set_image(vol)
        assert_same(remote, local, (remote.set_seed_mask(vol.array == 300), local.mask))
        assert_same(remote, local, (remote.add_point((5, 5, 3)), local.add_point((5, 5, 3))))
        errors = []

        def click():
            try:
                remote.add_point((13, 11, 9))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        worker = threading.Thread(target=click)
        worker.start()
        started = time.monotonic()
        progress = f"/sessions/{remote.session_id}/progress"
        while not client.call("GET", progress)["busy"]:  # the request is in the server, its model running
            assert time.monotonic() - started < 30
            time.sleep(0.02)
        server.process.kill()
        worker.join(60)
        assert len(errors) == 1 and isinstance(errors[0], ServerError)
        assert "stopped answering" in str(errors[0]) and "restarted" in str(errors[0])
        assert server.restarts == 1 and server.alive and server.process.pid != first_pid
        assert remote.mask is not None and len(remote.prompts) == 1  # the failed click changed nothing
        # the next click rebuilds the session (image, seed, click 1) on the new server and adds click 2
        assert_same(remote, local, (remote.add_point((13, 11, 9)), local.add_point((13, 11, 9))))
        assert len(client.sessions()) == 1
        server.process.kill()  # a second death is not restarted: a clear error
        server.process.wait(10)
        with pytest.raises(ServerError, match="stopped answering"):
            remote.add_point((5, 4, 10))
        assert server.restarts == 1
        log_dir = server._dir
    assert server.process is None and not log_dir.exists()


def test_launcher_reports_a_server_that_cannot_start():
    server = LocalServer(device="cpu", extra_args=("--max-sessions", "0"), startup_timeout=60)
    with pytest.raises(ServerError, match="did not start.*exit status 1.*--max-sessions must be at least 1"):
        server.start()
    assert server.process is None


def test_serve_refuses_a_public_address_without_a_token():
    bad = subprocess.run([sys.executable, "-m", "samadapt3d", "serve", "--host", "0.0.0.0"], capture_output=True,
                         text=True, timeout=60, cwd=LIB)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip() == ("samadapt3d: error: refusing to serve on 0.0.0.0 (not loopback) without a token: "
                                  "give --token-file")


def test_another_python_does_not_inherit_this_interpreters_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONHOME", "/slicer/lib/python")
    monkeypatch.setenv("PYTHONPATH", "/slicer/site-packages")
    monkeypatch.setenv("SAMADAPT3D_KEPT", "yes")
    other = LocalServer(python=str(tmp_path / "python3"), env={"PYTHONPATH": "/mine"}).child_env()
    assert "PYTHONHOME" not in other and other["PYTHONPATH"] == "/mine" and other["SAMADAPT3D_KEPT"] == "yes"
    same = LocalServer(python=sys.executable).child_env()
    assert same["PYTHONHOME"] == "/slicer/lib/python" and same["PYTHONPATH"] == "/slicer/site-packages"
