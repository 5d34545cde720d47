"""A VMBus channel: the pair of rings in one channel mapping plus the way to signal the peer.

Layer 4 (vmbus). The mapping holds the guest's TX ring in its first half and the guest's RX
ring in its second half (spec/vmbus.md 3.1). The guest writes the first and reads the second;
the emulated host, built on the same class with ``role="host"``, does the opposite. Signals
follow the ring rules: a writer signals only on empty -> non-empty with the peer unmasked (3.7),
a reader only when it freed the space a blocked writer asked for (3.9).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from netvsc.errors import ConfigError, RingFullError
from netvsc.vmbus.ring import RingReader, RingView, RingWriter, as_piece
from netvsc.wire.vmbus import (
    HV_PAGE_SIZE,
    PACKET_ALIGNMENT,
    PACKET_DESCRIPTOR_SIZE,
    PACKET_FLAG_COMPLETION_REQUESTED,
    PACKET_TYPE_COMPLETION,
    PACKET_TYPE_INBAND,
)

__all__ = ["Channel", "ReceivedPacket", "encode_descriptor"]

# (type, flags, transaction_id, header extension bytes, payload bytes incl. padding)
ReceivedPacket = tuple[int, int, int, bytes, bytes]

_ROLES = ("guest", "host")


def encode_descriptor(
    packet_type: int, hlen8: int, tlen8: int, flags: int, transaction_id: int
) -> np.ndarray:
    """The 16-byte channel packet descriptor (4.1); lengths in 8-byte units."""
    descriptor = np.zeros(PACKET_DESCRIPTOR_SIZE, dtype=np.uint8)
    descriptor[:8].view("<u2")[:] = (packet_type, hlen8, tlen8, flags)
    descriptor[8:].view("<u8")[0] = transaction_id & 0xFFFF_FFFF_FFFF_FFFF
    return descriptor


class Channel:
    """TX ring + RX ring + signal of one VMBus channel, for either side of it."""

    def __init__(
        self,
        area: np.ndarray,
        signal: Callable[[], None],
        relid: int = 0,
        monitor_id: int = 255,
        role: str = "guest",
    ) -> None:
        if role not in _ROLES:
            raise ConfigError("role", role, "'guest' or 'host'")
        if not isinstance(area, np.ndarray) or area.dtype != np.uint8 or area.ndim != 1:
            raise ConfigError("channel area", type(area).__name__, "a 1-D uint8 numpy array")
        half = area.shape[0] // 2
        if half % HV_PAGE_SIZE != 0 or half <= HV_PAGE_SIZE or area.shape[0] != 2 * half:
            raise ConfigError(
                "channel area size", area.shape[0], "two rings, each a multiple of 4096 larger than 4096"
            )
        self.relid = relid
        self.monitor_id = monitor_id
        self.role = role
        self._signal = signal
        guest_tx = RingView(area[:half], name=f"channel {relid} TX")
        guest_rx = RingView(area[half:], name=f"channel {relid} RX")
        self.tx_view, self.rx_view = (guest_tx, guest_rx) if role == "guest" else (guest_rx, guest_tx)
        self.tx = RingWriter(self.tx_view)
        self.rx = RingReader(self.rx_view)
        self.signals_sent = 0

    # -- sending ---------------------------------------------------------------------------

    def send_inband(
        self,
        payload: object,
        transaction_id: int,
        completion_requested: bool = False,
        *,
        defer_signal: bool = False,
    ) -> None:
        """Send an in-band packet (hlen 2). Raises ``RingFullError`` when it does not fit."""
        flags = PACKET_FLAG_COMPLETION_REQUESTED if completion_requested else 0
        self._send_plain(PACKET_TYPE_INBAND, flags, payload, transaction_id, defer_signal)

    def send_completion(self, payload: object, transaction_id: int, *, defer_signal: bool = False) -> None:
        """Send a completion (type 0xb, flags 0) echoing ``transaction_id``."""
        self._send_plain(PACKET_TYPE_COMPLETION, 0, payload, transaction_id, defer_signal)

    def send_raw(self, *pieces: object, defer_signal: bool = False) -> None:
        """Send a pre-built packet (descriptor with correct hlen/tlen first; padding is added)."""
        if not self.tx.try_write(*pieces):
            raise RingFullError(
                f"{self.tx_view.name}: no room for a {sum(len(p) for p in pieces)}-byte packet"
            )
        if not defer_signal:
            self.flush_signal()

    def _send_plain(
        self, packet_type: int, flags: int, payload: object, transaction_id: int, defer: bool
    ) -> None:
        body = as_piece(payload)
        tlen8 = (PACKET_DESCRIPTOR_SIZE + body.shape[0] + PACKET_ALIGNMENT - 1) // PACKET_ALIGNMENT
        descriptor = encode_descriptor(
            packet_type, PACKET_DESCRIPTOR_SIZE // PACKET_ALIGNMENT, tlen8, flags, transaction_id
        )
        self.send_raw(descriptor, body, defer_signal=defer)

    def flush_signal(self) -> bool:
        """Signal the peer once for everything sent since the last flush, if the rules ask for it."""
        if self.tx.take_signal():
            self.signals_sent += 1
            self._signal()
            return True
        return False

    # -- receiving -------------------------------------------------------------------------

    def recv(self) -> ReceivedPacket | None:
        """The next packet as (type, flags, transaction_id, header extension, payload), or None.

        The header extension is the bytes between the descriptor and ``hlen * 8`` (empty for
        in-band and completion packets); the payload runs to ``tlen * 8`` and so includes the
        sender's zero padding. Raises ``ProtocolError`` for a malformed packet or ring.
        """
        packet = self.rx.read()
        if packet is None:
            return None
        # Give the space back at once: the writer may be blocked on it (3.9).
        self.commit()
        fields = packet[:8].view("<u2")
        packet_type, hlen8, flags = int(fields[0]), int(fields[1]), int(fields[3])
        transaction_id = int(packet[8:16].view("<u8")[0])
        header_end = hlen8 * PACKET_ALIGNMENT
        return (
            packet_type,
            flags,
            transaction_id,
            packet[PACKET_DESCRIPTOR_SIZE:header_end].tobytes(),
            packet[header_end:].tobytes(),
        )

    def commit(self) -> None:
        """Give back the space of what was read since the last commit, and signal the peer if it
        waits for that space (3.9). For readers that consume packets with the ring kernels."""
        if self.rx.commit():
            self.signals_sent += 1
            self._signal()
