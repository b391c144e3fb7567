"""Server settings of the module: what is refused before any connection, and one real local `samadapt3d serve`
child reached through ServerControl (loopback, stopped at the end)."""
from __future__ import annotations

import sys

import pytest

from SAMAdapt3DSlicerLib import server_control as sc


@pytest.mark.parametrize("settings, problem", [
    (sc.ServerSettings(), ""),
    (sc.ServerSettings(mode="remote", url="gpu-box:8000", token="t"), "URL"),
    (sc.ServerSettings(mode="remote", url="http://gpu-box:8000"), "token"),
    (sc.ServerSettings(mode="remote", url="http://127.0.0.1:8000"), ""),  # loopback may run without a token
    (sc.ServerSettings(mode="remote", url="https://gpu-box:8000/", token="t"), ""),
    (sc.ServerSettings(mode="cloud"), "unknown"),
])
def test_settings_problems(settings, problem):
    found = settings.problem()
    assert (problem in found) if problem else found == ""


def test_bad_settings_fail_before_connecting():
    from samadapt3d.client import ServerError

    control = sc.ServerControl(sys.executable)
    control.configure(sc.ServerSettings(mode="remote", url="nope"))
    with pytest.raises(ServerError, match="URL"):
        control.client()


def test_a_remote_client_is_rebuilt_when_its_settings_change():
    control = sc.ServerControl(sys.executable)
    control.configure(sc.ServerSettings(mode="remote", url="http://gpu-a:8000", token="a"))
    first = control.client()
    assert control.client() is first and first.url == "http://gpu-a:8000"
    control.configure(sc.ServerSettings(mode="remote", url="http://gpu-b:8000", token="a"))
    assert control.client() is not first and control.client().url == "http://gpu-b:8000"


def test_local_server_started_with_the_given_python_and_stopped():
    control = sc.ServerControl(sys.executable)
    control.configure(sc.ServerSettings(device="cpu"))
    try:
        text = control.describe()
        local = control._local
        assert local is not None and local.alive and local.python == sys.executable
        assert "local server" in text and "device cpu" in text
    finally:
        control.stop()
    assert not local.alive and control._local is None
