"""A throwaway local Prefect server (``prefect server start``) bound to 127.0.0.1.

Used by the deployment tests and the orchestration benchmark: a real server process, its own
PREFECT_HOME (SQLite database, settings), nothing reachable from outside the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_command() -> list[str]:
    """The ``prefect`` CLI of the running interpreter's environment."""
    script = Path(sys.executable).parent / "prefect"
    return [str(script)] if script.exists() else [sys.executable, "-m", "prefect.cli"]


def server_env(home: str | os.PathLike, **settings: str) -> dict[str, str]:
    """Environment for the server and its CLI clients: private home, no telemetry, no UI."""
    env = {**os.environ, "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_CLI_PROMPT": "false", **settings}
    env.pop("PREFECT_API_URL", None)  # the server must not report to some other server
    return env


@contextlib.contextmanager
def local_prefect_server(home: str | os.PathLike, port: int | None = None,
                         startup_timeout: float = 120.0,
                         scheduler_loop_seconds: float | None = None, ui: bool = False) -> Iterator[str]:
    """Start ``prefect server start`` and yield its API URL once /api/health answers.

    ``scheduler_loop_seconds`` shortens the scheduler's 60 s loop so tests see scheduled runs of a
    freshly created deployment within seconds; ``ui`` serves the web UI on the same port. The server is
    stopped (SIGTERM, then SIGKILL) on exit."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    # The UI's scripts call the API at PREFECT_UI_API_URL, which otherwise names the default port.
    settings = {"PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"} if ui else {}
    if scheduler_loop_seconds is not None:
        settings["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = str(scheduler_loop_seconds)
    log_path = home / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*prefect_command(), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=server_env(home, **settings),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(url, proc, log_path, startup_timeout)
        yield url
    finally:
        _stop(proc)


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"prefect server not healthy after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # its own session: uvicorn workers go with it
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
