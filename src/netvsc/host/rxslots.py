"""Receive-buffer slots of the emulated host: who may use each slot of the guest's receive buffer,
and which slots a guest still holds (spec/host.md 2.2, 2.3, 2.5).

Layer 7 (host). The bookkeeping lives in three numpy arrays so that the receive path's kernels
take, send and release slots for a whole batch in one call, and ``ReceiveSlots`` offers the same
operations to Python (control messages, tests, fault injection):

- ``slot_table`` (int32, one column per slot): the slot's state (free, taken, outstanding), the
  queue that owns it, the next slot of the list it is in (a free list, or the chain of one
  outstanding packet) and, for the first slot of an outstanding packet, its channel;
- ``list_table`` (int64, one column per list): head, tail, length and "active" of the free lists,
  one FIFO per queue (0..63), one for the 16 control slots, one for data slots no active queue
  owns;
- ``outstanding`` (int64, per channel): slots sent on that channel and not yet completed.

A slot comes back only when the guest completes the transaction id it was sent under (the first
slot of its packet), on the channel it was sent on; completions are accepted in any order and an
unknown or repeated id releases nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import njit

from netvsc.errors import ConfigError

__all__ = ["MAX_QUEUES", "RX_CONTROL_SLOTS", "ReceiveSlots"]

RX_CONTROL_SLOTS = 16  # OpenVMM RX_RESERVED_CONTROL_BUFFERS (host.md 2.2)
MAX_QUEUES = 64  # channels of one NIC (the primary and up to 63 subchannels)

# slot_table rows
STATE, OWNER, NEXT, PACKET_CHANNEL = 0, 1, 2, 3
SLOT_ROWS = 4
FREE, TAKEN, OUTSTANDING = 0, 1, 2
# list_table rows and the two lists after the queues'
HEAD, TAIL, LENGTH, ACTIVE = 0, 1, 2, 3
LIST_ROWS = 4
CONTROL_LIST = MAX_QUEUES
SPARE_LIST = MAX_QUEUES + 1
LISTS = MAX_QUEUES + 2

# Error codes of the kernels (negative)
ERR_NOT_TAKEN = -1  # a slot given back or marked that is not taken
ERR_BAD_CHANNEL = -2


# ---------------------------------------------------------------------------------------------
# Kernels


@njit(nogil=True, cache=True)
def _push(slot_table, list_table, which, slot):
    """Append ``slot`` to list ``which`` (FIFO)."""
    slot_table[NEXT, slot] = -1
    if list_table[LENGTH, which] == 0:
        list_table[HEAD, which] = slot
    else:
        slot_table[NEXT, list_table[TAIL, which]] = slot
    list_table[TAIL, which] = slot
    list_table[LENGTH, which] += 1


@njit(nogil=True, cache=True)
def _pop(slot_table, list_table, which):
    """The head of list ``which``, or -1 when it is empty."""
    if list_table[LENGTH, which] == 0:
        return -1
    slot = np.int64(list_table[HEAD, which])
    list_table[HEAD, which] = slot_table[NEXT, slot]
    list_table[LENGTH, which] -= 1
    slot_table[NEXT, slot] = -1
    return slot


@njit(nogil=True, cache=True)
def return_slot(slot_table, list_table, control_slots, slot):
    """Make ``slot`` free again, at the end of its owner's FIFO (host.md 2.3)."""
    slot_table[STATE, slot] = FREE
    slot_table[PACKET_CHANNEL, slot] = -1
    if slot < control_slots:
        _push(slot_table, list_table, CONTROL_LIST, slot)
        return
    owner = slot_table[OWNER, slot]
    if 0 <= owner < MAX_QUEUES and list_table[ACTIVE, owner] != 0:
        _push(slot_table, list_table, owner, slot)
    else:
        _push(slot_table, list_table, SPARE_LIST, slot)


@njit(nogil=True, cache=True)
def take_slots(slot_table, list_table, which, wanted, out, out_start):
    """Up to ``wanted`` slots of list ``which`` into ``out[out_start:]``, FIFO; returns how many."""
    taken = 0
    while taken < wanted and out_start + taken < out.shape[0]:
        slot = _pop(slot_table, list_table, which)
        if slot < 0:
            break
        slot_table[STATE, slot] = TAKEN
        out[out_start + taken] = slot
        taken += 1
    return taken


@njit(nogil=True, cache=True)
def give_back_slots(slot_table, list_table, control_slots, slots, first, count):
    """Return taken slots ``slots[first:first+count]`` that were never sent; ERR_NOT_TAKEN if one
    is not taken (nothing after it is returned)."""
    slot_count = slot_table.shape[1]
    for k in range(first, first + count):
        slot = np.int64(slots[k])
        if slot < 0 or slot >= slot_count or slot_table[STATE, slot] != TAKEN:
            return ERR_NOT_TAKEN
        return_slot(slot_table, list_table, control_slots, slot)
    return 0


@njit(nogil=True, cache=True)
def mark_outstanding(slot_table, outstanding, channel, slots, first, count):
    """Record taken ``slots[first:first+count]`` as one packet sent on ``channel``; returns the
    transaction id (the first slot), or an error code (nothing recorded)."""
    slot_count = slot_table.shape[1]
    if count < 1:
        return ERR_NOT_TAKEN
    if channel < 0 or channel >= outstanding.shape[0]:
        return ERR_BAD_CHANNEL
    for k in range(first, first + count):
        slot = np.int64(slots[k])
        if slot < 0 or slot >= slot_count or slot_table[STATE, slot] != TAKEN:
            return ERR_NOT_TAKEN
    previous = np.int64(-1)
    for k in range(first, first + count):
        slot = np.int64(slots[k])
        if slot_table[STATE, slot] != TAKEN:
            # The same slot twice: undo, or the packet's chain would loop.
            for j in range(first, k):
                slot_table[STATE, slots[j]] = TAKEN
                slot_table[NEXT, slots[j]] = -1
            return ERR_NOT_TAKEN
        slot_table[STATE, slot] = OUTSTANDING
        slot_table[NEXT, slot] = -1
        if previous >= 0:
            slot_table[NEXT, previous] = slot
        previous = slot
    transaction_id = np.int64(slots[first])
    slot_table[PACKET_CHANNEL, transaction_id] = channel
    outstanding[channel] += count
    return transaction_id


@njit(nogil=True, cache=True)
def release_packet(slot_table, list_table, outstanding, control_slots, channel, transaction_id):
    """The guest completed ``transaction_id`` on ``channel``: free every slot of that packet.
    Returns the slots freed, 0 for an unknown or repeated id or the wrong channel (host#23)."""
    if transaction_id < 0 or transaction_id >= slot_table.shape[1]:
        return 0
    if channel < 0 or slot_table[PACKET_CHANNEL, transaction_id] != channel:
        return 0
    if slot_table[STATE, transaction_id] != OUTSTANDING:
        return 0
    freed = 0
    slot = np.int64(transaction_id)
    while slot >= 0:
        following = np.int64(slot_table[NEXT, slot])
        return_slot(slot_table, list_table, control_slots, slot)
        freed += 1
        slot = following
    outstanding[channel] -= freed
    return freed


@njit(nogil=True, cache=True)
def _requeue(slot_table, list_table, control_slots, queues, first_data, scratch):
    """Split the data slots between ``queues`` (sorted, each < MAX_QUEUES) as host.md 2.3 says and
    move the free ones to their new FIFO: the old FIFOs in queue order, then the spare list."""
    slot_count = slot_table.shape[1]
    collected = 0
    for which in range(MAX_QUEUES):
        while True:
            slot = _pop(slot_table, list_table, which)
            if slot < 0:
                break
            scratch[collected] = slot
            collected += 1
    while True:
        slot = _pop(slot_table, list_table, SPARE_LIST)
        if slot < 0:
            break
        scratch[collected] = slot
        collected += 1
    for which in range(MAX_QUEUES):
        list_table[ACTIVE, which] = 0
    data_slots = slot_count - first_data
    share = data_slots // queues.shape[0]
    for slot in range(first_data, slot_count):
        slot_table[OWNER, slot] = -1
    for position in range(queues.shape[0]):
        queue = queues[position]
        list_table[ACTIVE, queue] = 1
        start = first_data + position * share
        end = slot_count if position == queues.shape[0] - 1 else start + share
        for slot in range(start, end):
            slot_table[OWNER, slot] = queue
    for k in range(collected):
        return_slot(slot_table, list_table, control_slots, np.int64(scratch[k]))


@njit(nogil=True, cache=True)
def _free_all(slot_table, list_table, control_slots):
    for slot in range(slot_table.shape[1]):
        return_slot(slot_table, list_table, control_slots, slot)


@njit(nogil=True, cache=True)
def _release_all(slot_table, list_table, outstanding, control_slots):
    for slot in range(slot_table.shape[1]):
        channel = slot_table[PACKET_CHANNEL, slot]
        if channel >= 0 and slot_table[STATE, slot] == OUTSTANDING:
            release_packet(slot_table, list_table, outstanding, control_slots, channel, slot)
    outstanding[:] = 0


# ---------------------------------------------------------------------------------------------
# Python face


class ReceiveSlots:
    """Slot allocator over the guest receive buffer (host.md 2.2, 2.3, 2.5).

    A slot is free (in its owner queue's FIFO), taken (handed out, not yet sent) or outstanding
    (sent under a transaction id on one channel, waiting for the guest's completion).
    """

    def __init__(self, buffer_size: int, slot_size: int, control_slots: int = RX_CONTROL_SLOTS) -> None:
        if not isinstance(slot_size, int | np.integer) or slot_size < 68:
            # Linux requires sub_alloc_size >= 68 (host.md 2.1).
            raise ConfigError("slot_size", slot_size, "an integer >= 68 bytes")
        if not isinstance(buffer_size, int | np.integer) or buffer_size < slot_size:
            raise ConfigError("buffer_size", buffer_size, f"an integer >= the slot size ({slot_size})")
        if not isinstance(control_slots, int | np.integer) or control_slots < 0:
            raise ConfigError("control_slots", control_slots, "an integer >= 0")
        buffer_size, slot_size, control_slots = int(buffer_size), int(slot_size), int(control_slots)
        self.slot_size = slot_size
        self.slot_count = buffer_size // slot_size
        self.control_slots = min(control_slots, self.slot_count)
        self.slot_table = np.zeros((SLOT_ROWS, self.slot_count), dtype=np.int32)
        self.slot_table[OWNER:] = -1
        self.list_table = np.zeros((LIST_ROWS, LISTS), dtype=np.int64)
        self.outstanding_slots = np.zeros(MAX_QUEUES, dtype=np.int64)
        self._scratch = np.zeros(self.slot_count, dtype=np.int64)
        self._one = np.zeros(1, dtype=np.int64)
        # Every slot starts free, in ascending order; data slots wait on the spare list for the
        # first split.
        _free_all(self.slot_table, self.list_table, self.control_slots)
        self.active_queues: tuple[int, ...] = ()
        self.set_active_queues([0])

    # -- queues ------------------------------------------------------------------------------

    def set_active_queues(self, queues: Sequence[int]) -> None:
        """Split the data slots between ``queues`` (2.3): each gets (count - 16) / n, the last
        also the remainder. Free slots move at once; outstanding ones when completed."""
        active = sorted({int(q) for q in queues})
        if not active or active[0] < 0 or active[-1] >= MAX_QUEUES:
            raise ConfigError("active queues", list(queues), f"one or more queue indices 0..{MAX_QUEUES - 1}")
        _requeue(
            self.slot_table,
            self.list_table,
            self.control_slots,
            np.array(active, dtype=np.int64),
            self.control_slots,
            self._scratch,
        )
        self.active_queues = tuple(active)

    # -- handing out -------------------------------------------------------------------------

    def _take_one(self, which: int) -> int | None:
        if take_slots(self.slot_table, self.list_table, which, 1, self._one, 0) == 0:
            return None
        return int(self._one[0])

    def take_control(self) -> int | None:
        """A reserved slot (0..control_slots-1) for a control message, or None."""
        return self._take_one(CONTROL_LIST)

    def take_data(self, queue: int) -> int | None:
        """The next free data slot of ``queue`` (FIFO), or None."""
        if not self._active(queue):
            return None
        return self._take_one(queue)

    def take_data_many(self, queue: int, wanted: int) -> np.ndarray:
        """Up to ``wanted`` data slots of ``queue`` at once, FIFO order."""
        if not self._active(queue) or wanted <= 0:
            return np.zeros(0, dtype=np.int64)
        out = np.zeros(wanted, dtype=np.int64)
        taken = take_slots(self.slot_table, self.list_table, queue, wanted, out, 0)
        return out[:taken]

    def take_data_matching(self, queue: int, accept: Callable[[int], bool]) -> int | None:
        """The first free data slot of ``queue`` that ``accept`` takes (fault injection only)."""
        if not self._active(queue):
            return None
        free = self.take_data_many(queue, self.free_data(queue))
        chosen = next((int(slot) for slot in free if accept(int(slot))), None)
        # Everything else goes back in the order it was taken: the FIFO is unchanged otherwise.
        rest = np.array([slot for slot in free if slot != chosen], dtype=np.int64)
        self._give_back(rest)
        return chosen

    def free_data(self, queue: int) -> int:
        return int(self.list_table[LENGTH, queue]) if self._active(queue) else 0

    def _active(self, queue: int) -> bool:
        return 0 <= queue < MAX_QUEUES and bool(self.list_table[ACTIVE, queue])

    def _give_back(self, slots: np.ndarray) -> None:
        if give_back_slots(self.slot_table, self.list_table, self.control_slots, slots, 0, slots.shape[0]):
            raise ConfigError("slot", [int(s) for s in slots], "slots taken and not yet sent")

    def give_back(self, slots: Sequence[int]) -> None:
        """Return taken slots that were never sent (the ring was full)."""
        self._give_back(np.asarray(slots, dtype=np.int64).reshape(-1))

    def mark_outstanding(self, channel_index: int, slots: Sequence[int]) -> int:
        """Record taken ``slots`` as sent in one packet on ``channel_index``; returns the
        transaction id (the first slot: unique while outstanding, below the slot count)."""
        batch = np.asarray(slots, dtype=np.int64).reshape(-1)
        if batch.shape[0] == 0:
            raise ConfigError("slots", 0, "at least one slot")
        result = mark_outstanding(
            self.slot_table, self.outstanding_slots, channel_index, batch, 0, batch.shape[0]
        )
        if result == ERR_BAD_CHANNEL:
            raise ConfigError("channel_index", channel_index, f"0..{MAX_QUEUES - 1}")
        if result < 0:
            raise ConfigError("slots", [int(s) for s in batch], "slots taken and not yet sent")
        return int(result)

    # -- completions -------------------------------------------------------------------------

    def release(self, channel_index: int, transaction_id: int) -> bool:
        """The guest completed ``transaction_id`` on ``channel_index``: free every slot of that
        packet. False (nothing freed) for an unknown or repeated id, or the wrong channel."""
        if not 0 <= transaction_id < self.slot_count:
            return False
        freed = release_packet(
            self.slot_table,
            self.list_table,
            self.outstanding_slots,
            self.control_slots,
            channel_index,
            transaction_id,
        )
        return freed > 0

    def outstanding(self, channel_index: int) -> int:
        """Slots sent on ``channel_index`` and not yet completed by the guest."""
        if not 0 <= channel_index < MAX_QUEUES:
            return 0
        return int(self.outstanding_slots[channel_index])

    def outstanding_ids(self, channel_index: int) -> list[int]:
        heads = (self.slot_table[PACKET_CHANNEL] == channel_index) & (self.slot_table[STATE] == OUTSTANDING)
        return [int(tid) for tid in np.flatnonzero(heads)]

    def release_all(self) -> None:
        """Forget every outstanding packet (the channel closed, host.md 1.1)."""
        _release_all(self.slot_table, self.list_table, self.outstanding_slots, self.control_slots)
