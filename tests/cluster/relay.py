"""A TCP relay: a listening address that forwards each connection to another address.

The kind backend's pods cannot reach the test run's services on the host's loopback; a relay on
the host's address in kind's Docker network forwards to them (both ways, byte for byte).
"""

from __future__ import annotations

import contextlib
import socket
import threading


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until ``source`` ends, then end ``sink``'s sending side (one
    direction of a forwarded connection; the relay and the node agent's Service proxy use it)."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


class Relay:
    """Listens on ``(host, port)`` (``port`` 0: any free one) and forwards to ``target``."""

    def __init__(self, host: str, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self._server = socket.create_server((host, port), reuse_port=False)
        self._server.settimeout(0.5)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"relay-{self.address[1]}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        self._thread.join(timeout=5)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()
            self._conns.clear()
