"""Signals through a real process boundary: Ctrl-C in the first second (while numpy / torch import) and
SIGTERM / SIGHUP in the middle of `segment` end with one line on stderr, a non-zero exit and no file left."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samadapt3d.volume import Volume
from test_session import phantom

TESTS = Path(__file__).resolve().parent
#: the child registers the toy family and makes the session's segment wait, announcing it on stdout
SLOW_SEGMENT = """
import sys, time
sys.path.insert(0, sys.argv[1])
import samadapt3d.models as m
m.FAMILY_MODULES += ('test_session_toymodel',)
import samadapt3d.session as s
original = s.InteractiveSession.segment
def slow(self, *a, **k):
    print('segmenting', flush=True)
    time.sleep(60)
    return original(self, *a, **k)
s.InteractiveSession.segment = slow
from samadapt3d.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    path = tmp_path_factory.mktemp("signals") / "img.nrrd"
    Volume(phantom()).save(path)
    return path


def _wait_for_library(pid: int, name: str, timeout: float = 120.0) -> None:
    """Until the process has mapped a shared library whose path contains `name` (it is importing that module)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if name in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            pass
        time.sleep(0.005)
    raise AssertionError(f"the child never loaded {name}")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc to see what the child imports")
@pytest.mark.parametrize("importing", ["numpy", "libtorch"])
def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path, ct, importing):
    """Ctrl-C sent as soon as the child starts importing numpy (just after the CLI's first lines) or torch."""
    out = tmp_path / "mask.nrrd"
    child = subprocess.Popen([sys.executable, "-m", "samadapt3d", "segment", str(ct), "-o", str(out),
                              "--point-ijk", "5,5,3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_library(child.pid, importing)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err.strip() == "samadapt3d: interrupted", err
    assert not out.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_during_segment(tmp_path, ct, signum):
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen([sys.executable, "-c", SLOW_SEGMENT, str(TESTS), "segment", str(ct), "-o",
                              str(out / "mask.nrrd"), "--model", "toy-crop", "--point-ijk", "5,5,3", "--quiet",
                              "--overlay", str(out / "view.png")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert child.stdout.readline().strip() == "segmenting"
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert err.strip().splitlines() == [f"samadapt3d: stopped by {name} (no partial file is left)"]
    assert list(out.iterdir()) == []


def test_the_cli_module_loads_numpy_only_after_its_handler(tmp_path):
    """As the program, the handler is installed before anything slow is imported (the package import is torch-free);
    imported by other code (tests, Slicer), the module leaves Ctrl-C alone."""
    code = ("import signal, sys; sys.argv[0] = {argv0!r}; import samadapt3d.cli as c; "
            "print(signal.getsignal(signal.SIGINT) is c._interrupted_early, 'torch' in sys.modules)")
    for argv0, installed in (("/usr/local/bin/samadapt3d", "True"), ("-c", "False")):
        result = subprocess.run([sys.executable, "-c", code.format(argv0=argv0)], capture_output=True, text=True,
                                timeout=120)
        assert result.stdout.split() == [installed, "False"], result.stderr
