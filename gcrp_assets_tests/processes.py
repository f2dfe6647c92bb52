"""Helpers of the tests that start long-running processes (no tests here): each in its own process group,
so that stopping it stops everything it started, and a free local port."""

import os
import signal
import socket
import subprocess


def own_process_group() -> None:
    """`preexec_fn` for a child that leads its own process group with default SIGINT/SIGTERM handlers (a
    child of pytest inherits ignored signals otherwise, and Dagster's processes would not stop on SIGINT)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop_process_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGINT to the whole group (a clean shutdown), SIGKILL if it is not gone within `timeout` seconds."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
