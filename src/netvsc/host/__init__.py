"""The emulated Hyper-V host (layer 7): a NetVSP serving NetVSC devices through the uio interface.

It imports ``wire``, ``proto``, ``fastpath`` and ``vmbus`` (for the host side of a channel),
never ``pmd``: the driver and the host meet only in shared memory, as on a real machine.
"""
