"""An emulated host that an application starts for itself and removes when it is done.

Layer 8 (apps). ``netvsc testpmd`` without a device on a machine with no VMBus NIC, and
``netvsc bench``, run ``netvsc host`` as a child process under a fresh temporary root
(DESIGN.md section 4: the embedded default). ``EmbeddedHost`` starts it, waits until its control
socket answers, reads the devices it serves, and in ``stop`` sends SIGINT (the host removes its
tree), kills it after a deadline and removes the temporary directory, whatever happened before.

The child runs in a session of its own, so a Ctrl-C at the terminal reaches the application
only: the application closes its ports while the host still answers, then stops the host.
The child also asks the kernel for SIGTERM should the application die without a word
(``PR_SET_PDEATHSIG``), so no host outlives the process that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from netvsc.errors import DeviceError, NetvscError
from netvsc.host.control import request

__all__ = ["EmbeddedHost"]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


try:  # looked up now: the child, between fork and exec, only calls it
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class EmbeddedHost:
    """``netvsc host --devices N --backend SPEC`` under a temporary root, for one application run."""

    def __init__(
        self,
        devices: int = 2,
        backend: str = "vswitch",
        extra_args: Sequence[str] = (),
        *,
        prefix: str = "netvsc-host-",
    ) -> None:
        self.devices = devices
        self.backend = backend
        self.extra_args = list(extra_args)
        self.prefix = prefix
        self.directory: Path | None = None
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.nics: list[dict] = []

    @property
    def guids(self) -> list[str]:
        return [nic["guid"] for nic in self.nics]

    @property
    def macs(self) -> list[bytes]:
        return [bytes.fromhex(nic["mac"].replace(":", "")) for nic in self.nics]

    def start(self, timeout: float = START_TIMEOUT_S) -> EmbeddedHost:
        """Start the host and wait for its control socket; DeviceError (and nothing left behind)
        if it exits or does not answer in time."""
        self.directory = Path(tempfile.mkdtemp(prefix=self.prefix))
        self.root = self.directory / "root"
        self._log = open(self.directory / "host.log", "w+b")  # noqa: SIM115 - closed in stop()
        argv = [
            sys.executable,
            "-m",
            "netvsc",
            "host",
            "--root",
            str(self.root),
            "--devices",
            str(self.devices),
            "--backend",
            self.backend,
            *self.extra_args,
        ]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise DeviceError(
                        f"embedded host exited with code {self.proc.returncode}: {self.log_tail()}"
                    )
                try:
                    status = request(self.root, "status", timeout=1.0)
                    break
                except (NetvscError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise DeviceError(f"embedded host did not answer within {timeout:g} s: {self.log_tail()}")
                time.sleep(0.02)
            self.nics = sorted(status["nics"], key=lambda nic: nic["index"])
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, limit: int = 2000) -> str:
        """The end of what the host printed (for error messages)."""
        if self._log is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._log.flush()
            self._log.seek(0)
            return self._log.read().decode("utf-8", "replace")[-limit:].strip()
        return ""

    def ctl(self, command: str, **args: object) -> dict:
        return request(self.root, command, **args)

    def counters(self, nic: int) -> dict:
        """Counters of NIC ``nic``: groups ``host``, ``netvsp``, ``backend``, ..."""
        return self.ctl("counters", nic=nic)["nics"][0]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGINT, wait, SIGKILL if needed, remove the temporary directory. Idempotent."""
        code = None
        try:
            proc = self.proc
            if proc is not None:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                        proc.wait(5)
                code = proc.returncode
        finally:
            self.proc = None
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None
        return code

    def __enter__(self) -> EmbeddedHost:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
