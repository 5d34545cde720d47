"""The layout the data-path kernels share: table slots and state words of one queue.

Layer 5 (pmd). A queue's arrays reach its kernels as one ``ArrayTable`` (fastpath/addrtable.py):
``T_*`` names each slot and its dtype. Small per-queue scalars (configuration, cursors, counters
beyond the xstats of pmd/stats.py) are the int64 words ``Q_*`` of slot ``T_QSTATE``. Queue q's
RX and TX sides share one table because they share one channel (spec/pmd.md 2.2: one ring
carries received frames and send completions).
"""

from __future__ import annotations

import numpy as np

# -- table slots (dtype of each in comments) -------------------------------------------------------
T_TX_HEADER = 0  # uint32: header page of the guest-to-host ring
T_TX_DATA = 1  # uint8: its data area
T_TX_STATE = 2  # int64: the channel's ring writer state (shared with Channel.send_*)
T_RX_HEADER = 3  # uint32
T_RX_DATA = 4  # uint8
T_RX_STATE = 5  # int64: the channel's ring reader state (shared with Channel.recv)
T_SIGNAL_WORDS = 6  # uint32: the monitor page as words (empty when the channel has no monitor)
T_RECV_BUFFER = 7  # uint8: the receive buffer (GPADL 0xCAFE)
T_SEND_BUFFER = 8  # uint8: the send buffer (chimney sections)
T_CHIMNEY_STACK = 9  # int32: free chimney sections, shared by the port's queues
T_PORT_SYNC = 10  # uint32: [spin lock, chimney stack top], shared by the port's queues
T_QSTATE = 11  # int64: Q_* words
T_STAGING = 12  # int32: staging ring of received mbufs (power of two)
T_EVENT = 13  # uint8: one VMBus packet copied out of the ring
T_MAILBOX = 14  # uint8: RNDIS control messages found among data, for the control path
T_RX_COUNTERS = 15  # int64: this queue's row of the port's RX QueueCounters
T_TX_COUNTERS = 16  # int64: this queue's row of the port's TX QueueCounters
T_XFER_ID = 17  # int64: transaction id of each held transfer-page packet (zero-copy)
T_XFER_REFS = 18  # int32: references to it (the driver's own + each external mbuf)
T_XFER_FREE = 19  # int32: free entries
T_ACK_PENDING = 20  # int64: receive completions that found the ring full, retried first
T_TXD_FREE = 21  # int32: free TX descriptors
T_TXD_MBUF = 22  # int32: the packet a GPA send holds until its completion (-1 none)
T_TXD_POOL = 23  # int32: the pool slot of that packet
T_TXD_CHIMNEY = 24  # int32: the chimney section the send used (-1 none)
T_TXD_PACKETS = 25  # int32: packets the send carries (aggregation)
T_TXD_BYTES = 26  # int64: frame bytes the send carries
T_TXD_HEADER = 27  # uint8: 128-byte RNDIS header slot per descriptor, in DMA memory
T_TXD_HEADER_GPAS = 28  # uint64: GPA of each 4 KiB page of those slots
T_POOLS = 29  # int64: the port's pool registry, POOL_TABLE_WORDS per pool slot
T_SCRATCH = 30  # uint8: packet building and linearising (SCRATCH_SIZE)
T_GPA = 31  # uint64: GPA ranges of one send
T_GPA_LEN = 32  # int64: their lengths
T_EXT_DONE = 33  # int64: external buffers drained back from the pool
T_PARSE = 34  # int64: parse_frame output
T_CHAIN = 35  # int32: buffer indices of a chain being built (kernels allocate nothing)
T_BOUNCE = 36  # uint8: BOUNCE_SLOTS contiguous buffers in DMA memory, for chains needing too many ranges
T_BOUNCE_GPAS = 37  # uint64: GPA of each 4 KiB page of those buffers
T_TXD_BOUNCE = 38  # int32: the bounce buffer a send holds until its completion (-1 none)
T_RX_CACHE = 39  # int32: mbufs of the RX pool taken ahead, RX_CACHE_SIZE at a time
T_RELEASED = 40  # int32: segments freed by TX whose return to their pool waits (RELEASED_SIZE)
T_SLOTS = 41

# -- Q_* state words -----------------------------------------------------------------------------
Q_QUEUE_ID = 0
Q_PORT_ID = 1
Q_STARTED = 2  # data frames are delivered only while 1 (pmd#30)
Q_RX_POOL = 3  # pool slot of the RX mempool, -1 = none (completions-only queue)
Q_RX_OWNER = 4  # this queue's external-memory owner id in that pool, -1 = none
Q_RX_COPYBREAK = 5
Q_RX_EXTMBUF = 6
Q_VLAN_STRIP = 7  # 0: re-insert received tags into the frame (pmd#53)
Q_RECV_SECTIONS = 8  # the host's receive sections (for the zero-copy half rule, pmd#66)
Q_EXT_HELD = 9  # transfer-page packets held by external mbufs
Q_STAGING_HEAD = 10  # consumer position (monotonic)
Q_STAGING_TAIL = 11  # producer position (monotonic)
Q_CONTROL_KIND = 12  # what the control path must handle after this call (CONTROL_*)
Q_CONTROL_LENGTH = 13  # bytes in T_EVENT for CONTROL_RAW
Q_MAILBOX_USED = 14
Q_MAILBOX_COUNT = 15
Q_SIGNAL_WORD = 16  # word index of the monitor bit, -1: the Python side signals
Q_SIGNAL_MASK = 17
Q_SIGNAL_PYTHON = 18  # set by a kernel: signal through the interrupt page now
Q_ACK_COUNT = 19  # entries in T_ACK_PENDING
Q_XFER_FREE_TOP = 20
Q_TXD_FREE_TOP = 21
Q_NB_DESC = 22
Q_TX_FREE_THRESH = 23
Q_TX_COPYBREAK = 24
Q_AGG_DESC = 25  # descriptor of the aggregation being filled, -1 none
Q_AGG_PACKETS_LEFT = 26
Q_AGG_BYTES_LEFT = 27
Q_AGG_PREVIOUS = 28  # send-buffer offset of the last RNDIS message placed (-1 none)
Q_AGG_USED = 29  # bytes of the section used
Q_AGG_MAX_PACKETS = 30
Q_AGG_MAX_BYTES = 31
Q_ALIGNMENT = 32  # RNDIS packet alignment in a section
Q_CHIMNEY_SIZE = 33
Q_SIGNALS = 34  # signals sent by kernels
# counters beyond the xstats
Q_BAD_XFER = 35  # transfer-page packets dropped without acknowledgement (pmd#59)
Q_BAD_RANGES = 36  # ranges skipped (pmd#60)
Q_CONTROL_MESSAGES = 37  # RNDIS control messages passed to the control path
Q_UNKNOWN_COMPLETIONS = 38  # completions with a bad or unknown descriptor
Q_ACK_DEFERRED = 39  # receive completions that waited for ring space
Q_ACK_LOST = 40  # receive completions that could not even be queued
Q_RING_ERRORS = 41  # protocol errors of the ring itself
Q_STOPPED_DROPS = 42  # data frames that arrived while the port was stopped
Q_TX_LINEARIZED = 43  # packets copied to fewer segments before a GPA send
Q_TX_SOFT_CHECKSUM = 44  # UDP/IPv4 > 1420 bytes without DF: checksum done here
Q_TX_VLAN_MOVED = 45  # in-band 802.1Q tags moved to the VLAN PPI (pmd#54)
Q_TX_CHIMNEY_FALLBACK = 46  # copy-eligible frames sent by GPA for want of a section
Q_TX_BAD_OFFLOAD = 47  # packets refused: offload request with impossible lengths
Q_OVERSIZE_EVENTS = 48  # VMBus packets larger than T_EVENT, skipped
Q_MAX_RANGES = 49  # GPA ranges one send may carry, the RNDIS header's included
Q_TX_MALFORMED = 50  # packets refused: empty, or lengths that do not add up
Q_RX_SCATTERED = 51  # frames delivered as chains (scattered RX)
Q_BOUNCE_FREE = 52  # bit i set: bounce buffer i is free
Q_TX_BOUNCED = 53  # packets copied into a bounce buffer (a chain needing more than MAX_GPA_RANGES)
Q_RX_CACHED = 54  # mbufs in T_RX_CACHE (only inside on_transfer_pages: it ends with none)
Q_RX_RANGES_LEFT = 55  # ranges of the transfer being handled not handled yet: the most to take
Q_RELEASED = 56  # entries in T_RELEASED (only inside a kernel call: each one ends with none)
Q_RELEASED_POOL = 57  # the pool slot they belong to
Q_WORDS = 64

# Q_CONTROL_KIND values
CONTROL_NONE = 0
CONTROL_RAW = 1  # a VMBus packet for the control path waits in T_EVENT
CONTROL_MAILBOX = 2  # RNDIS control messages wait in T_MAILBOX

# Set in a burst kernel's result (above the packet count) when the Python side has work after
# the call: a control item (Q_CONTROL_KIND) or a signal through the interrupt page
# (Q_SIGNAL_PYTHON). The caller tests one bit instead of reading two numpy words.
ATTENTION = 1 << 32
COUNT_MASK = ATTENTION - 1

# Transaction ids of data sends: tag bits 62-63 = 01, queue in 32..47, descriptor in 0..31.
# The control path's ids are small counters, so the two never meet.
TID_DATA_TAG = 1 << 62
TID_TAG_SHIFT = 62
TID_QUEUE_SHIFT = 32

POOLS_MAX = 16  # distinct mempools one port can send from
TXD_HEADER_SLOT = 128  # bytes of RNDIS header room per descriptor (pmd.md 3.1)
EVENT_SIZE = 65536
MAILBOX_SIZE = 65536
SCRATCH_SIZE = 65536 + 256
GPA_MAX = 64
MAX_GPA_RANGES = 32  # per send, header range included (Linux's limit; spec/pmd.md 3.4)
EXT_DONE_SIZE = 256
# A 64 KiB frame of 2 KiB mbufs is a 35-segment chain, more ranges than one send may carry, and
# a copy into other mbufs of the same size would need as many: such a chain is copied into one
# of these contiguous DMA buffers instead (17 ranges at most), held until its completion.
BOUNCE_SLOTS = 2
BOUNCE_SLOT = 17 * 4096
PARSE_WORDS = 16  # parse_frame output, then the PPI walk's
# The RX path takes mbufs from its pool up to this many at a time for the frames of one transfer
# (one lock per refill, not per frame); what a transfer did not use goes back at its end.
RX_CACHE_SIZE = 32
# TX frees packets (copied ones, completed sends) with their pool's lock taken once for up to
# this many segments, not once per packet.
RELEASED_SIZE = 512


def new_qstate() -> np.ndarray:
    return np.zeros(Q_WORDS, dtype=np.int64)


# Counters beyond the xstats, by the name ``NetvscPort.datapath_counters`` reports them under.
EXTRA_COUNTERS = {
    "rx_bad_transfer_packets": Q_BAD_XFER,
    "rx_bad_ranges": Q_BAD_RANGES,
    "rx_control_messages": Q_CONTROL_MESSAGES,
    "rx_stopped_drops": Q_STOPPED_DROPS,
    "rx_scattered": Q_RX_SCATTERED,
    "rx_ext_held": Q_EXT_HELD,
    "rx_ack_deferred": Q_ACK_DEFERRED,
    "rx_ack_lost": Q_ACK_LOST,
    "ring_errors": Q_RING_ERRORS,
    "oversize_events": Q_OVERSIZE_EVENTS,
    "unknown_completions": Q_UNKNOWN_COMPLETIONS,
    "tx_linearized": Q_TX_LINEARIZED,
    "tx_bounced": Q_TX_BOUNCED,
    "tx_soft_checksum": Q_TX_SOFT_CHECKSUM,
    "tx_vlan_moved": Q_TX_VLAN_MOVED,
    "tx_chimney_fallback": Q_TX_CHIMNEY_FALLBACK,
    "tx_bad_offload": Q_TX_BAD_OFFLOAD,
    "tx_malformed": Q_TX_MALFORMED,
    "signals": Q_SIGNALS,
}
