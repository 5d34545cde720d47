"""The emulated host's control socket: JSON lines over a Unix stream socket in the root.

Layer 7 (host). The server listens on ``ROOT/run/netvsc-host.sock``. A client sends one JSON
object per line, ``{"command": NAME, ...arguments}``, and gets one JSON object per line back:
``{"ok": true, ...result}`` or ``{"ok": false, "error": TEXT}``. The commands themselves are
executed by the server (``netvsc.host.server``); this module holds the socket plumbing on both
sides, non-blocking on the server side so that the host loop never waits for a slow client.

Commands (see ``netvsc host ctl --help``): ``ping``, ``status``, ``link`` {up: bool | flap: true, nic},
``mtu`` {mtu, nic}, ``vf_offer`` {serial, netdev, nic}, ``vf_revoke`` {nic}, ``rescind`` {nic},
``fault`` {name, value, nic}, ``counters`` {nic}, ``shutdown``. ``nic`` absent = every NIC.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from netvsc.errors import DeviceError, NetvscError

__all__ = ["CONTROL_SOCKET", "ControlClient", "ControlServer", "request"]

log = logging.getLogger(__name__)

CONTROL_SOCKET = "run/netvsc-host.sock"
MAX_LINE = 1 << 20  # a request larger than this is not a control command


def _short_address(path: Path) -> tuple[str, int]:
    """A sun_path for ``path`` that fits in 107 bytes, through ``/proc/self/fd`` (roots can be deep)."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dir_fd}/{path.name}", dir_fd


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""


class ControlServer:
    """Listening side: ``handler(request) -> result`` runs each command; exceptions become errors."""

    def __init__(self, root: Path, handler: Callable[[dict], dict]) -> None:
        self.path = Path(root) / CONTROL_SOCKET
        self.handler = handler
        address, dir_fd = _short_address(self.path)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self.listener.bind(address)
        finally:
            os.close(dir_fd)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.connections: dict[int, _Connection] = {}
        self.requests = 0

    def fileno(self) -> int:
        return self.listener.fileno()

    def accept(self) -> socket.socket | None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        sock.setblocking(False)
        self.connections[sock.fileno()] = _Connection(sock)
        return sock

    def readable(self, fd: int) -> bool:
        """Serve what arrived on connection ``fd``; False when it closed (caller unregisters it)."""
        connection = self.connections.get(fd)
        if connection is None:
            return False
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return False
        connection.inbuf += data
        while b"\n" in connection.inbuf:
            line, connection.inbuf = connection.inbuf.split(b"\n", 1)
            if line.strip():
                connection.outbuf += self._serve(line)
        if len(connection.inbuf) > MAX_LINE:
            connection.outbuf += self._reply({"ok": False, "error": "request line too long"})
            connection.inbuf = b""
        return self._flush(fd)

    def _serve(self, line: bytes) -> bytes:
        self.requests += 1
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("command"), str):
                raise ValueError('expected a JSON object with a "command" string')
            result = self.handler(req)
            return self._reply({"ok": True, **result})
        except (NetvscError, ValueError, TypeError, KeyError) as exc:
            return self._reply({"ok": False, "error": str(exc) or type(exc).__name__})
        except Exception as exc:  # a control command must never take the host down
            log.exception("control command failed")
            return self._reply({"ok": False, "error": f"internal error: {exc}"})

    @staticmethod
    def _reply(obj: dict) -> bytes:
        return (json.dumps(obj, default=str) + "\n").encode()

    def _flush(self, fd: int) -> bool:
        connection = self.connections[fd]
        # Replies are small; a client that does not read them is dropped rather than waited for.
        deadline = time.monotonic() + 0.5
        while connection.outbuf:
            try:
                sent = connection.sock.send(connection.outbuf)
                connection.outbuf = connection.outbuf[sent:]
            except (BlockingIOError, InterruptedError):
                if time.monotonic() > deadline:
                    self._drop(fd)
                    return False
                time.sleep(0.001)
            except OSError:
                self._drop(fd)
                return False
        return True

    def _drop(self, fd: int) -> None:
        connection = self.connections.pop(fd, None)
        if connection is not None:
            connection.sock.close()

    def close(self) -> None:
        for fd in list(self.connections):
            self._drop(fd)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ControlClient:
    """Client side: ``call(command, **args)`` returns the result dict or raises ``DeviceError``."""

    def __init__(self, root: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.path = Path(root) / CONTROL_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            address, dir_fd = _short_address(self.path)
        except OSError as exc:
            self.sock.close()
            raise DeviceError(f"{self.path}: no host is serving this root ({exc.strerror or exc})") from None
        try:
            self.sock.connect(address)
        except OSError as exc:
            self.sock.close()
            raise DeviceError(f"{self.path}: cannot reach the host ({exc.strerror or exc})") from None
        finally:
            os.close(dir_fd)
        self._buffer = b""

    def call(self, command: str, **args: object) -> dict:
        self.sock.sendall((json.dumps({"command": command, **args}) + "\n").encode())
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise DeviceError(f"{self.path}: no reply to {command!r}") from None
            if not chunk:
                raise DeviceError(f"{self.path}: host closed the connection during {command!r}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.pop("ok", False):
            raise DeviceError(f"host refused {command!r}: {reply.get('error', 'unknown error')}")
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def request(root: str | os.PathLike[str], command: str, timeout: float = 5.0, **args: object) -> dict:
    """One command on a fresh connection."""
    with ControlClient(root, timeout) as client:
        return client.call(command, **args)
