"""Structure machinery of the wire layer (layer 1): declare a byte layout once, get the rest.

A ``Struct`` is declared with its name, its size and its fields (name, byte offset,
kind, element count). From that one declaration it gives:

- ``dtype``: a numpy structured dtype with explicit offsets and little-endian
  types, for views over shared memory and for the numba fast path;
- ``offset(name)`` and ``field_offsets``: the offsets as plain ints;
- ``encode(**fields) -> bytes``: the structure with the given fields, every other
  byte zero; an out-of-range value is a ``ConfigError`` naming the field;
- ``decode(buf, offset=0) -> Record``: the fields as Python values (ints, bytes,
  tuples), with a ``ProtocolError`` when the buffer is too short.

Gaps between fields are reserved bytes: zero when encoding, ignored when decoding.
Every declared structure is kept in ``REGISTRY`` (name -> Struct), which
``python -m netvsc.wire`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from netvsc.errors import ConfigError, ProtocolError

__all__ = ["REGISTRY", "Field", "Record", "Struct", "byte_view", "require_length"]

REGISTRY: dict[str, Struct] = {}

# kind -> (element size, numpy format). "bytes" is an opaque byte string.
_KINDS: dict[str, tuple[int, str]] = {
    "u8": (1, "u1"),
    "u16": (2, "<u2"),
    "u32": (4, "<u4"),
    "u64": (8, "<u8"),
    "bytes": (1, "u1"),
}


def byte_view(buf: Any) -> memoryview:
    """A flat unsigned-byte memoryview of any buffer (bytes, bytearray, memoryview, numpy array)."""
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def require_length(what: str, buf: memoryview, offset: int, needed: int) -> None:
    """Raise ProtocolError unless ``buf[offset:offset + needed]`` lies inside the buffer."""
    if offset < 0 or needed < 0 or offset + needed > len(buf):
        raise ProtocolError(f"{what}: needs {needed} bytes at offset {offset}, buffer holds {len(buf)} bytes")


@dataclass(frozen=True)
class Field:
    """One field of a structure: a scalar, an array of scalars, bytes, or an array of structures."""

    name: str
    offset: int
    kind: str  # "u8" | "u16" | "u32" | "u64" | "bytes" | "struct"
    count: int = 1  # array length; for "bytes" the byte count; 1 = scalar
    struct: Struct | None = None

    @property
    def element_size(self) -> int:
        return self.struct.size if self.struct is not None else _KINDS[self.kind][0]

    @property
    def size(self) -> int:
        return self.element_size * self.count

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def is_scalar(self) -> bool:
        return self.kind not in ("bytes", "struct") and self.count == 1


class Record:
    """Decoded field values with attribute access (``rec.length``); ``_asdict()`` for a plain dict."""

    __slots__ = ("_name", "_values")

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"{self._name} has no field {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{self._name} record is read-only")

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Record):
            return self._name == other._name and self._values == other._values
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._name, tuple(self._values)))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{self._name}({inner})"

    def _asdict(self) -> dict[str, Any]:
        return dict(self._values)

    def _replace(self, **values: Any) -> Record:
        unknown = set(values) - set(self._values)
        if unknown:
            raise AttributeError(f"{self._name} has no field(s) {sorted(unknown)}")
        return Record(self._name, {**self._values, **values})


class Struct:
    """A fixed byte layout declared once; see the module docstring."""

    def __init__(
        self,
        name: str,
        size: int,
        fields: Iterable[tuple],
        *,
        spec: str = "",
        register: bool = True,
    ) -> None:
        self.name = name
        self.size = size
        self.spec = spec
        parsed: list[Field] = []
        for item in fields:
            fname, offset, kind = item[0], item[1], item[2]
            count = item[3] if len(item) > 3 else 1
            if isinstance(kind, Struct):
                parsed.append(Field(fname, offset, "struct", count, kind))
            elif kind in _KINDS:
                parsed.append(Field(fname, offset, kind, count))
            else:
                raise TypeError(f"{name}.{fname}: unknown kind {kind!r}")
        self.fields: tuple[Field, ...] = tuple(parsed)
        self._by_name = {f.name: f for f in self.fields}
        if len(self._by_name) != len(self.fields):
            raise TypeError(f"{name}: duplicate field names")
        # A declaration error here is a bug in this package: fail at import.
        previous_end, previous_name = 0, None
        for f in sorted(self.fields, key=lambda f: f.offset):
            if f.offset < previous_end:
                raise TypeError(f"{name}: field {f.name} overlaps {previous_name}")
            if f.end > size:
                raise TypeError(f"{name}: field {f.name} ends at {f.end}, past size {size}")
            previous_end, previous_name = f.end, f.name
        self._dtype: np.dtype | None = None
        if register:
            if name in REGISTRY:
                raise TypeError(f"structure {name} declared twice")
            REGISTRY[name] = self

    # -- layout -------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Struct({self.name}, size={self.size})"

    @property
    def dtype(self) -> np.dtype:
        """numpy structured dtype with the declared offsets and itemsize (little-endian)."""
        if self._dtype is None:
            formats: list[Any] = []
            for f in self.fields:
                base = f.struct.dtype if f.struct is not None else np.dtype(_KINDS[f.kind][1])
                formats.append((base, (f.count,)) if f.count != 1 or f.kind == "bytes" else base)
            self._dtype = np.dtype(
                {
                    "names": [f.name for f in self.fields],
                    "formats": formats,
                    "offsets": [f.offset for f in self.fields],
                    "itemsize": self.size,
                }
            )
        return self._dtype

    @property
    def field_offsets(self) -> dict[str, int]:
        return {f.name: f.offset for f in self.fields}

    def field(self, name: str) -> Field:
        return self._by_name[name]

    def offset(self, name: str) -> int:
        """Byte offset of a field (KeyError for an unknown name)."""
        return self._by_name[name].offset

    def end_of(self, name: str) -> int:
        """First byte after a field: the length a buffer needs to hold it."""
        return self._by_name[name].end

    # -- encode ---------------------------------------------------------------------------------

    def encode(self, /, **values: Any) -> bytes:
        out = bytearray(self.size)
        self.encode_into(out, 0, **values)
        return bytes(out)

    def encode_into(self, buf: Any, offset: int = 0, /, **values: Any) -> None:
        """Write the whole structure at ``offset`` (unnamed fields and gaps zero).

        ``buf`` and ``offset`` are positional-only, so a field may be called ``offset``.
        """
        view = byte_view(buf)
        if offset < 0 or offset + self.size > len(view):
            raise ConfigError("offset", offset, f"0..{len(view) - self.size} for {self.name}")
        unknown = set(values) - set(self._by_name)
        if unknown:
            raise TypeError(f"{self.name} has no field(s) {sorted(unknown)}")
        view[offset : offset + self.size] = bytes(self.size)
        for name, value in values.items():
            self._put(view, offset, self._by_name[name], value)

    def _put(self, view: memoryview, base: int, f: Field, value: Any) -> None:
        where = base + f.offset
        label = f"{self.name}.{f.name}"
        if f.kind == "bytes":
            data = bytes(value)
            if len(data) != f.count:
                raise ConfigError(label, value, f"exactly {f.count} bytes")
            view[where : where + f.count] = data
            return
        if f.kind == "struct":
            items = list(value)
            if len(items) != f.count:
                raise ConfigError(label, value, f"{f.count} elements")
            for i, item in enumerate(items):
                fields = item._asdict() if isinstance(item, Record) else dict(item)
                f.struct.encode_into(view, where + i * f.struct.size, **fields)
            return
        size = _KINDS[f.kind][0]
        items = [value] if f.count == 1 else list(value)
        if len(items) != f.count:
            raise ConfigError(label, value, f"{f.count} elements")
        limit = (1 << (8 * size)) - 1
        for i, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, int | np.integer):
                raise ConfigError(label, item, f"an integer 0..{limit:#x}")
            item = int(item)
            if not 0 <= item <= limit:
                raise ConfigError(label, item, f"0..{limit:#x}")
            at = where + i * size
            view[at : at + size] = item.to_bytes(size, "little")

    # -- decode ---------------------------------------------------------------------------------

    def decode(self, buf: Any, offset: int = 0, *, available: int | None = None) -> Record:
        """Decode the structure at ``offset``.

        ``available`` (for versioned NDIS objects) says how many bytes of the structure the
        sender supplied; fields past it read as zero, as a shorter revision is zero-extended.
        Without it the whole structure must be in the buffer.
        """
        view = byte_view(buf)
        take = self.size if available is None else min(max(available, 0), self.size)
        require_length(self.name, view, offset, take)
        raw = bytes(view[offset : offset + take]) + bytes(self.size - take)
        return self._from_raw(raw)

    def _from_raw(self, raw: bytes) -> Record:
        values: dict[str, Any] = {}
        for f in self.fields:
            chunk = raw[f.offset : f.end]
            if f.kind == "bytes":
                values[f.name] = chunk
            elif f.kind == "struct":
                step = f.struct.size
                values[f.name] = tuple(
                    f.struct._from_raw(chunk[i * step : (i + 1) * step]) for i in range(f.count)
                )
            elif f.count == 1:
                values[f.name] = int.from_bytes(chunk, "little")
            else:
                size = _KINDS[f.kind][0]
                values[f.name] = tuple(
                    int.from_bytes(chunk[i * size : (i + 1) * size], "little") for i in range(f.count)
                )
        return Record(self.name, values)

    def view(self, buf: Any, offset: int = 0) -> np.ndarray:
        """A zero-copy numpy record view of the structure at ``offset`` (writable if ``buf`` is)."""
        view = byte_view(buf)
        require_length(self.name, view, offset, self.size)
        array = np.frombuffer(view, dtype=np.uint8, count=self.size, offset=offset)
        return array.view(self.dtype)[0:1].reshape(())
