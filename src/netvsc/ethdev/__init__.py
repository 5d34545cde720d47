"""The generic Port API (layer 6, ethdev): what every port type offers an application.

``ethdev.api`` holds the value types and the ``Port`` protocol; it sits below ``pmd/`` (the
NetVSC port imports it), while the other port types of this package (AF_PACKET, TAP, failsafe)
sit beside ``pmd/``. Importing this package loads nothing heavy.
"""
