"""A loopback HTTP server that accepts connections and never answers: media that never arrives,
a Label Studio that never replies. Tests wait on its counters, never on the clock."""

from __future__ import annotations

import socket
import threading


class StallServer:
    """Accepts connections and never answers, until release() closes them all (and any later one)."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._accepted = 0
        self._lock = threading.Lock()
        self.released = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="stall-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self._accepted += 1
                if self.released.is_set():
                    conn.close()
                else:
                    self._held.append(conn)

    @property
    def accepted(self) -> int:
        """Connections accepted so far, answered never."""
        with self._lock:
            return self._accepted

    @property
    def held(self) -> int:
        """Connections (downloads) accepted and still left hanging."""
        with self._lock:
            return len(self._held)

    def release(self) -> None:
        with self._lock:
            self.released.set()
            for conn in self._held:
                conn.close()
            self._held.clear()

    def close(self) -> None:
        self.release()
        self._closed.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> StallServer:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
