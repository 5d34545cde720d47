"""``python -m netvsc.wire``: print every wire structure's size and field offsets (layer 1).

``--json`` prints ``{name: {"size": N, "fields": {field: offset}}}`` in declaration order,
for comparing the layouts with the C definitions; without it a readable table.
"""

from __future__ import annotations

import argparse
import json
import sys

from netvsc.wire import STRUCTURES


def layouts() -> dict[str, dict]:
    return {
        name: {"size": struct.size, "fields": struct.field_offsets, "spec": struct.spec}
        for name, struct in STRUCTURES.items()
    }


def render_table() -> str:
    lines = []
    for name, struct in STRUCTURES.items():
        lines.append(f"{name}  ({struct.size} bytes, spec/{struct.spec})")
        for field in struct.fields:
            shape = f"[{field.count}]" if field.count != 1 or field.kind == "bytes" else ""
            kind = field.struct.name if field.struct is not None else field.kind
            lines.append(f"  {field.offset:5d}  {field.size:5d}  {field.name}: {kind}{shape}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netvsc.wire", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the layouts as one JSON object")
    args = parser.parse_args(argv)
    if args.json:
        json.dump(layouts(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
