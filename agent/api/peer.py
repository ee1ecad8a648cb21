"""The HTTP protocol of the server's sockets, with the peer's Unix user on requests over the Unix socket.

uvicorn gives an app the client's address but not the connection; the kernel's word on who connected
(SO_PEERCRED) is on the socket, so it is read when the connection is made and put in each request's
scope under ``PEER_UID`` (absent over TCP).
"""

from __future__ import annotations

import socket
import struct

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PEER_UID = "gpuherd.peer_uid"
_UCRED = struct.Struct("3i")  # pid, uid, gid


class PeerCredentialsProtocol(HttpToolsProtocol):
    peer_uid: int | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            _, self.peer_uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.peer_uid is not None:
            self.scope[PEER_UID] = self.peer_uid  # type: ignore[literal-required]
