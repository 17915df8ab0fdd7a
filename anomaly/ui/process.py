"""Start the app in a child process and wait until it answers (the annotation self-test, tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ["-c", "from anomaly.ui.app import launch; launch()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(env_extra: dict, log_path: Path, argv: list[str] | None = None, port: int | None = None,
              timeout_s: float = 150.0, new_session: bool = False) -> tuple[subprocess.Popen, str]:
    """Run ``python ARGV`` (default: ``anomaly.ui.app.launch()``) in the repository root with the
    environment plus ``env_extra`` on ``port`` (a free one by default), output appended to
    ``log_path``; returns (process, URL) once the page answers. Raises RuntimeError, with the log's
    tail, if the process exits first or does not answer within ``timeout_s``."""
    port = port or free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra)
    env.pop("SPACE_ID", None)
    log_path = Path(log_path)
    log = open(log_path, "a")
    proc = subprocess.Popen([sys.executable, *(argv or LAUNCH)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=new_session)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited while starting ({log_path}): {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the app did not start within {timeout_s:.0f} s ({log_path})")
