"""Slow and oversized clients against `herd serve` (a real process on loopback): a few dozen
connections for a few seconds. The original: 20 unfinished 8 MB headers raised RSS from 251 to
431 MB until the clients left, and slow-header and slow-body connections were never cut."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from fake_backend import start_backend
from servers import pool_yaml, start_gateway

LIMITS = {"max_header_kb": 16, "header_timeout_s": 1.0, "body_timeout_s": 1.0, "max_connections": 40}
CHAT = {"model": "herd", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def gateway(tmp_path):
    with start_backend(name="math-7b") as b:
        pool = tmp_path / "pool.yaml"
        pool.write_text(pool_yaml([{"name": "math-7b", "base_url": b.url}], gateway=LIMITS))
        with start_gateway(pool) as gw:
            yield gw


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    return s


def answer(s: socket.socket) -> bytes:
    """What the server sent before closing (b"" if it just closed), waiting at most 5 s."""
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return data


def eventually(check, timeout: float = 30) -> bool:
    """Whether ``check`` holds within ``timeout`` s: the server's side of a closed connection
    happens when it gets to it, and a busy machine may take a while."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def send_quietly(s: socket.socket, data: bytes) -> None:
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server cut us off mid-send: that is the point


def test_oversized_and_slow_clients_are_cut_and_memory_comes_back(gateway):
    gw = gateway
    start = rss_mb(gw.proc.pid)
    started = time.monotonic()
    huge = [connect(gw.port) for _ in range(20)]
    for s in huge:  # an unfinished 4 MB header each
        send_quietly(s, b"GET /health HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * (4 << 20))
    slow_head = [connect(gw.port) for _ in range(10)]
    for s in slow_head:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
    slow_body = [connect(gw.port) for _ in range(10)]
    for s in slow_body:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 1000\r\n\r\n{\"model\": ")
    assert all(answer(s).startswith(b"HTTP/1.1 431") for s in huge)
    assert all(answer(s).startswith(b"HTTP/1.1 408") for s in slow_head)
    assert all(answer(s) == b"" for s in slow_body)  # the body deadline closes: the app had the request already
    assert time.monotonic() - started < 10
    assert rss_mb(gw.proc.pid) < start + 20
    assert httpx.post(f"{gw.url}/chat/completions", json=CHAT, timeout=10).status_code == 200
    log = gw.log()
    assert "request head not received within 1 s" in log and "request body not received within 1 s" in log
    assert "Traceback" not in log and "ERROR" not in log


def test_connections_over_the_limit_are_refused(gateway):
    gw = gateway
    idle = [connect(gw.port) for _ in range(LIMITS["max_connections"] + 10)]
    time.sleep(0.3)
    refused = 0
    for s in idle[-10:]:
        s.settimeout(10)  # answered and closed at once; a busy machine may take a while to get to it
        refused += answer(s).startswith(b"HTTP/1.1 503")
    assert refused == 10
    for s in idle[:-10]:
        s.close()
    assert eventually(lambda: httpx.get(f"{gw.root}/health", timeout=10).status_code == 200)


def test_a_client_gone_mid_body_is_an_info_line_and_a_counted_499(gateway):
    """The original: logged as an ERROR with a traceback, and not counted."""
    gw = gateway
    s = connect(gw.port)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: 1000\r\n\r\n{\"model\": ")
    time.sleep(0.3)
    s.close()
    assert eventually(lambda: 'herd_requests_total{route="disconnected",status="499"} 1.0'
                      in httpx.get(f"{gw.root}/metrics").text)
    log = gw.log()
    assert "went away before sending its whole body" in log and "Traceback" not in log and "ERROR" not in log
