"""The client of `samadapt3d serve`: the standard library and numpy only (no torch), so it runs inside
3D Slicer's Python while the model runs in another process or on another machine.

    from samadapt3d.client import LocalServer, ServerClient, RemoteSession, ServerError

    with LocalServer(python="/path/to/python-with-torch") as server:    # or ServerClient("http://gpu:8000", token)
        client = server.client
        session = client.open_session(client.load_model("litemedsam"))  # a RemoteSession: InteractiveSession's API
        session.set_image(volume)
        mask = session.add_point((210, 180, 95))

Protocol and remote use: docs/SERVER.md.
"""
from __future__ import annotations

from .launcher import LocalServer
from .remote import RemoteSession
from .server_client import ServerClient
from .transport import ServerError

__all__ = ["ServerClient", "RemoteSession", "LocalServer", "ServerError"]
