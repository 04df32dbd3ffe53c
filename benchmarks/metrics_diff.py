"""Compare two metrics.json files number by number: every number, string and list in the same
place, to the last bit; timings (router_ms) and the creation time are listed apart, since they
differ between any two runs.

    python benchmarks/metrics_diff.py A/metrics.json B/metrics.json

Prints "N numbers, D differences" (and the first differences), exit code 1 when D > 0."""

from __future__ import annotations

import json
import math
import sys

TIMINGS = {"router_ms", "created"}


def walk(a, b, path: str, out: dict) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out["differences"].append(f"{path}/{key}: only in {'B' if key not in a else 'A'}")
            elif key in TIMINGS:
                out["timings"] += 1
            else:
                walk(a[key], b[key], f"{path}/{key}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out["differences"].append(f"{path}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        out["numbers"] += 1
        same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
        if not same or type(a) is not type(b):
            out["differences"].append(f"{path}: {a!r} vs {b!r}")
    else:
        out["other"] += 1
        if a != b:
            out["differences"].append(f"{path}: {a!r} vs {b!r}")


def main() -> None:
    a, b = (json.load(open(p)) for p in sys.argv[1:3])
    out = {"numbers": 0, "other": 0, "timings": 0, "differences": []}
    walk(a, b, "", out)
    print(f"{out['numbers']} numbers, {len(out['differences'])} differences "
          f"({out['other']} strings, booleans and nulls also compared; {out['timings']} timings not compared)")
    for line in out["differences"][:20]:
        print("  " + line)
    sys.exit(1 if out["differences"] else 0)


if __name__ == "__main__":
    main()
