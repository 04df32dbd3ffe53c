"""The per-turn choice log: one JSON line per answered request, so a team can join herd's
choices with what its users did next (the A/B test behind a blend's engagement figures)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

ENV_CHOICE_LOG = "HERD_CHOICE_LOG"


class ChoiceLog:
    """Appends records to a JSONL file. Each line is written whole with O_APPEND, so several
    worker processes can share one file without interleaving lines."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        os.close(self._fd)
