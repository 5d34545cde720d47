"""Drive DPDK's ``dpdk-testpmd`` against the emulated host, through the uio preload library.

Layer 8 (apps). ``DpdkTestpmd`` starts testpmd (Debian's ``dpdk`` package, DPDK 22.11, with its
netvsc PMD) on a pseudo-terminal, so its output is line-buffered and its command line answers
each command with a fresh prompt; ``command`` sends one line and returns the text printed
before the next prompt, within a deadline. The process runs with the preload library's
environment (``netvsc.preload``), so DPDK's unmodified vmbus bus and netvsc PMD see the host's
``ROOT`` as ``/sys/bus/vmbus`` and ``/dev/uioN``. ``close`` quits, kills on a deadline, and
removes DPDK's runtime directory, whatever state testpmd was in.

EAL options used: ``--no-huge`` (anonymous memory; with ``--iova-mode=va`` DMA addresses are
virtual addresses, which the host reads in testpmd's memory), ``--no-pci``, ``-a <guid>`` per
device, and a ``--file-prefix`` of its own so several testpmd processes can run at once. DPDK
22.11's vmbus bus ignores ``-a``/``-b`` and takes every device bound to uio_hv_generic, so the
devices are also named to the preload library (``UIOSHIM_DEVICES``): the others look unbound.

DPDK 22.11's testpmd forwards nothing on a netvsc port (the PMD never reports its queues as
started, fixed in 23.11; see ``netvsc/preload/testpmd_queue_state.c``): with
``fix_queue_state`` (the default) that companion library is preloaded too, so the queues of
a started netvsc port read as started. The PMD and its data path are untouched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from netvsc.errors import ConfigError, DeviceError
from netvsc.preload import build_testpmd_queue_state_library, preload_environment

__all__ = [
    "TESTPMD_ENV",
    "DpdkTestpmd",
    "parse_counters",
    "parse_fields",
    "testpmd_path",
]

TESTPMD_ENV = "NETVSC_DPDK_TESTPMD"  # another testpmd binary than the one on PATH
PROMPT = "testpmd> "
START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 30.0
QUIT_TIMEOUT_S = 20.0
DEFAULT_MBUFS = 8192
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
_COUNTER = re.compile(r"([A-Za-z][A-Za-z0-9_-]*):\s+(\d+)")
_FIELD = re.compile(r"^\s*([A-Za-z][^:]*?):\s*(.*?)\s*$")
_prefix_serial = itertools.count()


def testpmd_path() -> str | None:
    """The testpmd binary: ``$NETVSC_DPDK_TESTPMD`` or ``dpdk-testpmd`` on PATH; None if absent."""
    return shutil.which(os.environ.get(TESTPMD_ENV) or "dpdk-testpmd")


def parse_counters(text: str) -> dict[str, int]:
    """Every ``Name: <integer>`` pair of a stats block (``RX-packets: 12  RX-missed: 0 ...``)."""
    return {name: int(value) for name, value in _COUNTER.findall(text)}


def parse_fields(text: str) -> dict[str, str]:
    """``Field: value`` lines of ``show port info`` (``MAC address``, ``Link status``, ``MTU`` ...)."""
    fields = {}
    for line in text.splitlines():
        match = _FIELD.match(line)
        if match:
            fields.setdefault(match.group(1), match.group(2))
    return fields


def _runtime_directory(prefix: str) -> Path:
    # Where EAL keeps its per-prefix files (config, multi-process socket).
    if os.geteuid() == 0:
        return Path("/var/run/dpdk") / prefix
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / "dpdk" / prefix


class DpdkTestpmd:
    """One interactive ``dpdk-testpmd`` on the devices ``devices`` (instance GUIDs) of ``root``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        devices: Sequence[str],
        *,
        lcores: str = "0,1",
        memory_mb: int = 256,
        mbufs: int = DEFAULT_MBUFS,
        eal_args: Sequence[str] = (),
        app_args: Sequence[str] = (),
        file_prefix: str | None = None,
        fix_queue_state: bool = True,
        debug: bool = False,
    ) -> None:
        binary = testpmd_path()
        if binary is None:
            raise DeviceError("dpdk-testpmd not found: apt-get install dpdk librte-net-netvsc23 (DPDK 22.11)")
        if not devices:
            raise ConfigError("devices", list(devices), "at least one vmbus device GUID")
        if memory_mb < 64:
            raise ConfigError("memory_mb", memory_mb, "64 MiB or more")
        self.root = Path(root)
        self.file_prefix = file_prefix or f"netvsc{os.getpid()}x{next(_prefix_serial)}"
        self.runtime_dir = _runtime_directory(self.file_prefix)
        allow = [arg for guid in devices for arg in ("-a", guid)]
        self.argv = [
            binary,
            "--no-huge",
            "-m",
            str(memory_mb),
            "--iova-mode=va",
            "--no-pci",
            "--no-telemetry",
            "--file-prefix",
            self.file_prefix,
            "-l",
            lcores,
            *allow,
            *eal_args,
            "--",
            "-i",
            f"--total-num-mbufs={mbufs}",
            *app_args,
        ]
        self.environment = dict(os.environ)
        companions = [build_testpmd_queue_state_library()] if fix_queue_state else []
        self.environment.update(
            preload_environment(self.root, also_preload=companions, devices=list(devices), debug=debug)
        )
        self.proc: subprocess.Popen | None = None
        self._master_fd = -1
        self._output: list[str] = []  # everything read, in order (diagnostics)
        self._pending = ""  # read but not yet consumed by command()
        self._condition = threading.Condition()
        self._reader: threading.Thread | None = None
        self._eof = False

    # -- process ---------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> DpdkTestpmd:
        """Spawn testpmd on a pseudo-terminal and wait for its first prompt."""
        master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=self.environment,
                start_new_session=True,  # its own process group: close() can kill it all
                close_fds=True,
            )
        except OSError:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master_fd = master
        self._reader = threading.Thread(target=self._read_loop, name="testpmd-output", daemon=True)
        self._reader.start()
        try:
            startup = self._wait_prompt(timeout, "start-up")
            if "No probed ethernet devices" in startup:
                raise DeviceError(f"dpdk-testpmd found no port; its start-up output:\n{startup[-4000:]}")
        except BaseException:
            self.close()
            raise
        return self

    def _read_loop(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._master_fd], [], [], 0.5)
                if not ready:
                    if self.proc is not None and self.proc.poll() is not None:
                        break
                    continue
                data = os.read(self._master_fd, 65536)
            except OSError:  # EIO once the terminal's last writer is gone
                break
            if not data:
                break
            text = _ESCAPE.sub("", data.decode("utf-8", "replace"))
            with self._condition:
                self._output.append(text)
                self._pending += text
                self._condition.notify_all()
        with self._condition:
            self._eof = True
            self._condition.notify_all()

    def _wait_prompt(self, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        with self._condition:
            while PROMPT not in self._pending:
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    state = "exited" if self._eof else f"no prompt within {timeout:g} s"
                    raise DeviceError(f"dpdk-testpmd {what}: {state}; output:\n{self.output[-4000:]}")
                self._condition.wait(min(left, 0.5))
            before, _, after = self._pending.partition(PROMPT)
            self._pending = after
            return before

    @property
    def output(self) -> str:
        """Everything testpmd printed so far."""
        with self._condition:
            return "".join(self._output)

    def command(self, line: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
        """Send one command line; the text it printed before the next prompt (echo removed)."""
        if self.proc is None or self.proc.poll() is not None:
            raise DeviceError(f"dpdk-testpmd is not running (command {line!r})")
        with self._condition:
            self._pending = ""
        os.write(self._master_fd, line.encode() + b"\n")
        text = self._wait_prompt(timeout, f"command {line!r}")
        lines = text.split("\n")
        if lines and lines[0].strip() == line.strip():
            lines = lines[1:]
        return "\n".join(lines)

    # -- queries ---------------------------------------------------------------------------

    def port_info(self, port: int = 0) -> dict[str, str]:
        return parse_fields(self.command(f"show port info {port}"))

    def port_stats(self, port: int = 0) -> dict[str, int]:
        """``RX-packets``, ``RX-missed``, ``RX-bytes``, ``RX-errors``, ``RX-nombuf``, ``TX-*``."""
        text = self.command(f"show port stats {port}")
        return parse_counters(text.split("Throughput")[0])

    def xstats(self, port: int = 0) -> dict[str, int]:
        return parse_counters(self.command(f"show port xstats {port}"))

    def wait_stats(self, port: int, predicate, what: str, timeout: float = 30.0) -> dict[str, int]:
        """Poll ``show port stats`` until ``predicate(stats)``; AssertionError naming ``what`` if not."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.port_stats(port)
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"testpmd port {port}: {what} not reached within {timeout:g} s: {stats}")
            time.sleep(0.05)

    # -- shutdown ------------------------------------------------------------------------------

    def close(self, timeout: float = QUIT_TIMEOUT_S) -> int | None:
        """``quit``, wait, kill the process group if needed, remove the runtime dir; the exit code."""
        proc = self.proc
        try:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.write(self._master_fd, b"quit\n")
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            return proc.returncode if proc is not None else None
        finally:
            if self._reader is not None:
                self._reader.join(5)
            if self._master_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._master_fd)
                self._master_fd = -1
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def __enter__(self) -> DpdkTestpmd:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
