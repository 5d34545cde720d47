"""Protocol session engines (layer 2): NVSP and RNDIS, no I/O, one rule table, two roles."""
