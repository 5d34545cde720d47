"""Compile the package's preload libraries into a cache and describe how to preload them.

Layer 7 tooling. The libraries are never shipped built: their C sources are package data,
compiled with the system C compiler (``$CC``, else ``cc``) into ``$XDG_CACHE_HOME/netvsc``
(else ``~/.cache/netvsc``) under a name holding the hash of the source and of the compile
command, so an edited source or another compiler gives another file and a stale build is never
used. Each result is written under a temporary name and renamed, so concurrent builds (parallel
tests) never load a half-written file.

- ``uioshim.c``: the uio preload library (``build_library()``, ``preload_environment()``);
- ``testpmd_queue_state.c``: a companion for DPDK 22.11's testpmd on netvsc ports, built against
  the DPDK headers (``build_testpmd_queue_state_library()``; see its header for why).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from netvsc.errors import ConfigError, DeviceError

__all__ = [
    "DEVICES_ENV",
    "LIBRARY_ENV",
    "ROOT_ENV",
    "SOURCE_NAME",
    "TESTPMD_QUEUE_STATE_SOURCE",
    "build_library",
    "build_testpmd_queue_state_library",
    "cache_directory",
    "preload_environment",
]

SOURCE_NAME = "uioshim.c"
TESTPMD_QUEUE_STATE_SOURCE = "testpmd_queue_state.c"
ROOT_ENV = "UIOSHIM_ROOT"  # read by the library: the emulated root
DEVICES_ENV = "UIOSHIM_DEVICES"  # read by the library: the devices that look bound to uio
LIBRARY_ENV = "LD_PRELOAD"
_COMPILE_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra")
_LINK_FLAGS = ("-ldl", "-lpthread")  # both inside libc since glibc 2.34; named for older ones
_COMPILE_TIMEOUT_S = 120
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def cache_directory() -> Path:
    """``$XDG_CACHE_HOME/netvsc``, else ``~/.cache/netvsc``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "netvsc"


def _source_bytes(name: str) -> bytes:
    return resources.files("netvsc.preload").joinpath(name).read_bytes()


def _compiler() -> list[str]:
    command = shlex.split(os.environ.get("CC") or "cc")
    if not command or shutil.which(command[0]) is None:
        raise DeviceError(
            f"no C compiler {command[0] if command else '(empty $CC)'!r} to build the preload "
            "libraries: install one (apt-get install gcc) or set CC"
        )
    return command


def _compile(
    source_name: str, extra_flags: Sequence[str] = (), cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    source = _source_bytes(source_name)
    compiler = _compiler()
    flags = (*_COMPILE_FLAGS, *extra_flags)
    key = hashlib.sha256(source + repr((compiler, flags, _LINK_FLAGS)).encode()).hexdigest()[:16]
    directory = Path(cache_dir) if cache_dir is not None else cache_directory()
    library = directory / f"{Path(source_name).stem}-{key}.so"
    if library.is_file():
        return library
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeviceError(f"{directory}: cannot create the build cache: {exc.strerror or exc}") from None
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as workdir:
        source_path = Path(workdir) / source_name
        source_path.write_bytes(source)
        output = Path(workdir) / library.name
        command = [*compiler, *flags, "-o", str(output), str(source_path), *_LINK_FLAGS]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeviceError(f"compiling {source_name} failed: {exc}") from None
        if result.returncode != 0:
            raise DeviceError(
                f"compiling {source_name} failed ({shlex.join(command)}):\n{result.stderr.strip()}"
            )
        os.replace(output, library)  # atomic: a concurrent builder sees no file or a whole one
    return library


def build_library(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The path of the compiled uio preload library, compiling it first when the cache lacks it."""
    return _compile(SOURCE_NAME, cache_dir=cache_dir)


def build_testpmd_queue_state_library(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The testpmd companion library, compiled against ``pkg-config --cflags libdpdk``."""
    try:
        result = subprocess.run(
            ["pkg-config", "--cflags", "libdpdk"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"pkg-config libdpdk: {exc} (install pkg-config and dpdk-dev)") from None
    if result.returncode != 0:
        raise DeviceError(f"pkg-config libdpdk failed: {result.stderr.strip()} (install dpdk-dev)")
    return _compile(TESTPMD_QUEUE_STATE_SOURCE, shlex.split(result.stdout), cache_dir)


def preload_environment(
    root: str | os.PathLike[str],
    *,
    library: str | os.PathLike[str] | None = None,
    also_preload: Sequence[str | os.PathLike[str]] = (),
    devices: Sequence[str] | None = None,
    debug: bool = False,
) -> dict[str, str]:
    """The variables that run a program against the emulated root ``root``.

    ``LD_PRELOAD`` lists the uio library, then ``also_preload``, then whatever the current
    environment already preloads. ``devices`` (instance GUIDs) limits the devices that look
    bound to uio_hv_generic to those; None leaves every device of the root bound.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise ConfigError("root", str(root), "the directory of a running `netvsc host --root DIR`")
    library_path = Path(library) if library is not None else build_library()
    preloaded = [str(library_path), *(str(path) for path in also_preload)]
    existing = os.environ.get(LIBRARY_ENV, "")
    preloaded += [entry for entry in re.split(r"[:\s]+", existing) if entry and entry not in preloaded]
    # Colons, not spaces: the value survives the word splitting of `env $(netvsc host preload ...)`.
    environment = {LIBRARY_ENV: ":".join(preloaded), ROOT_ENV: str(root_path.resolve())}
    if devices is not None:
        for guid in devices:
            if not _GUID.fullmatch(guid):
                raise ConfigError(
                    "device", guid, "an instance GUID such as 7a08391f-f5a0-4ac0-9802-d13fd964f8df"
                )
        environment[DEVICES_ENV] = ",".join(guid.lower() for guid in devices)
    if debug:
        environment["UIOSHIM_DEBUG"] = "1"
    return environment
