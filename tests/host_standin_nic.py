"""A stand-in for ``netvsc.host.nic`` (developer A's NetVSP) used by the server/tree tests.

It follows the driving contract of ``NetVsp`` (``service``, ``poll_backend``, ``tick``,
``channel_closed``, ``control``, ``counters``, ``close``) and does just enough NVSP to observe
the server's behaviour: INIT is completed (success for the configured versions), SUBCHANNEL offers
the requested rings after its completion, every other packet that asks for a completion gets
an empty one. Each message is counted, so a test can see exactly which signals led to service.
The real NetVSP replaces it in the end-to-end tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from netvsc.wire import nvsp

ALL_VERSIONS = (
    nvsp.NVSP_VERSION_61,
    nvsp.NVSP_VERSION_6,
    nvsp.NVSP_VERSION_5,
    nvsp.NVSP_VERSION_4,
    nvsp.NVSP_VERSION_2,
    nvsp.NVSP_VERSION_1,
)


@dataclass
class NicConfig:
    mac: bytes
    mtu: int = 1500
    max_queues: int = 64
    nvsp_versions: tuple[int, ...] = ALL_VERSIONS
    link_speed_bps: int = 10_000_000_000
    slot_size: int | None = None
    link_change_delay_s: float = 5.0
    vf_offer_delay_s: float = 1.0
    faults: dict = field(default_factory=dict)


class NetVsp:
    def __init__(self, config, resources, backend, clock=time.monotonic) -> None:
        self.config = config
        self.resources = resources
        self.backend = backend
        self.channels = [resources.primary_channel()]
        self.stats = {"messages": 0, "inits": 0, "services": 0, "closed": 0, "ticks": 0}
        self.link_commands: list[str] = []

    def service(self, channel_index: int) -> bool:
        self.stats["services"] += 1
        channel = self.channels[channel_index]
        worked = False
        while True:
            channel.rx.mask_interrupts()
            while (packet := channel.recv()) is not None:
                worked = True
                self._handle(channel, *packet)
            if not channel.rx.unmask_interrupts():
                return worked

    def _handle(self, channel, packet_type, flags, transaction_id, _ext, payload) -> None:
        self.stats["messages"] += 1
        message_type = int.from_bytes(payload[:4], "little") if len(payload) >= 4 else -1
        if message_type == nvsp.NVSP_MSG_INIT:
            self.stats["inits"] += 1
            version = int.from_bytes(payload[4:8], "little")
            status = nvsp.NVSP_STATUS_SUCCESS if version in self.config.nvsp_versions else 0
            channel.send_completion(nvsp.encode_init_complete(status), transaction_id)
        elif message_type == nvsp.NVSP_MSG_SUBCHANNEL:
            count = int.from_bytes(payload[8:12], "little")
            channel.send_completion(
                nvsp.encode_subchannel_complete(nvsp.NVSP_STATUS_SUCCESS, count, size=40), transaction_id
            )
            self.channels += self.resources.offer_subchannels(count)
        elif flags & 1:
            channel.send_completion(b"", transaction_id)

    def poll_backend(self) -> bool:
        return False

    def tick(self, now: float) -> None:
        self.stats["ticks"] += 1

    def channel_opened(self, primary) -> None:
        self.channels[0] = primary

    def channel_closed(self) -> None:
        self.stats["closed"] += 1
        self.channels = self.channels[:1]

    def control(self, command: str, **args) -> dict:
        if command == "link":
            state = "up" if args.get("up") else "down"
            self.link_commands.append(state)
            return {"link": state}
        raise ValueError(f"stand-in: {command} not supported")

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    def close(self) -> None:
        pass
