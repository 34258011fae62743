"""A TCP proxy in front of redis-server that loses replies: the command reaches the server
and runs, then the client's connection is closed instead of the reply being forwarded.
That is the case op-ids exist for: the client cannot know whether its change was applied."""

from __future__ import annotations

import socket
import threading


class LossyProxy:
    def __init__(self, upstream_port: int, trigger: bytes, drops: int = 1):
        self.upstream_port = upstream_port
        self.trigger = trigger
        self.drops_left = drops
        self.dropped = 0  # replies lost so far
        self.connections = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self.connections += 1
                self._socks += [client, upstream]
            state = {"drop": False}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(client, upstream, state), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := client.recv(65536):
                if self.trigger in data:
                    with self._lock:
                        if self.drops_left > 0:
                            self.drops_left -= 1
                            state["drop"] = True  # before the server can answer
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _down(self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := upstream.recv(65536):
                if state["drop"]:
                    # The server has run the command (this is its reply): lose the reply.
                    with self._lock:
                        self.dropped += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)

    def close(self) -> None:
        _close(self._listener)
        with self._lock:
            for s in self._socks:
                _close(s)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
