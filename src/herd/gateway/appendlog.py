"""An append-only JSON Lines file that several worker processes share: each record is one line
written whole by one ``write`` on a file opened with O_APPEND, so lines never interleave, and a
line is in the kernel's hands before the request that wrote it is answered (it survives the
process being killed)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


class AppendLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        os.close(self._fd)
