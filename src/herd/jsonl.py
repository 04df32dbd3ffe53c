"""Reading text and JSON Lines files with errors that name the file (and line)."""

from __future__ import annotations

import json
from pathlib import Path


def read_text(path: str | Path, error: type[Exception], what: str = "file") -> str:
    """The file's UTF-8 text; ``error`` says it cannot be read, or is not text, and which file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: the {what} is not a text file (UTF-8)") from None


def read_jsonl(path: str | Path, error: type[Exception]) -> list[tuple[int, object]]:
    """(line number, value) for every non-blank line; ``error`` says what is wrong and where."""
    text = read_text(path, error, "JSON lines file")
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise error(f"{path}, line {n}: not valid JSON ({e.msg})") from None
    return rows
