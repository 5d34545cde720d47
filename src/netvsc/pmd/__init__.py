"""The NetVSC poll-mode driver (layer 5): NVS session, RNDIS control, RSS, the port."""
