"""Helpers shared by tests that start servers (import as ``tests.support``)."""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until_ready(
    proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, log: Path
) -> None:
    """Poll ``ready()`` until it is true; fail with the tail of the server's ``log`` if the
    process exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"server did not start; {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_process_group(proc: subprocess.Popen) -> None:
    """End a process started with ``start_new_session=True``, with all its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
