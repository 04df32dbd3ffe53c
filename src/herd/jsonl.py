"""Reading JSON Lines files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path, error: type[Exception]) -> list[tuple[int, object]]:
    """(line number, value) for every non-blank line; ``error`` says what is wrong and where."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (UTF-8 JSON lines)") from None
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise error(f"{path}, line {n}: not valid JSON ({e.msg})") from None
    return rows
