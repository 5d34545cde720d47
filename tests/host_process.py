"""Starting and stopping ``netvsc host`` as a subprocess for the end-to-end tests.

``HostProcess`` starts the command with a root under the test's tmp directory, waits for the
control socket to answer ``ping`` (a deadline wait), and in ``stop`` sends SIGINT, waits, kills
if needed and removes the root whatever happened, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from netvsc.errors import DeviceError
from netvsc.host.control import request

TESTS_DIR = Path(__file__).parent


class HostProcess:
    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.args = list(args)
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), full_env.get("PYTHONPATH", "")])
        full_env.update(env or {})
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netvsc", "host", "--root", str(self.root), *self.args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout: float = 10.0) -> float:
        """Seconds from start until ``ping`` answered; RuntimeError with stderr if the host exits first."""
        deadline = self.started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"host exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            with contextlib.suppress(DeviceError, OSError):
                request(self.root, "ping", timeout=1.0)
                return time.monotonic() - self.started
            if time.monotonic() > deadline:
                raise TimeoutError(f"host not ready within {timeout} s")
            time.sleep(0.01)

    def ctl(self, command: str, **args: object) -> dict:
        return request(self.root, command, **args)

    def ctl_cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "netvsc", "host", "ctl", "--root", str(self.root), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def counters(self, nic: int = 0) -> dict:
        return self.ctl("counters", nic=nic)["nics"][0]

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT, wait, SIGKILL if needed; remove the root in every case. Returns the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            return self.proc.returncode
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                with contextlib.suppress(Exception):
                    stream.close()
            shutil.rmtree(self.root, ignore_errors=True)
