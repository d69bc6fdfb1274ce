"""Shared by the serve tests: a synthetic cohort, a free loopback port, and `medalign-rag serve` as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

READY_TIMEOUT_S = 240  # the embedding model loads before the port opens; CI machines are shared
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_cohort(out: Path, patients: int = 3, seed: int = 7) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "medalign_rag.cli", "synth", "--out", str(out), "--patients", str(patients),
         "--seed", str(seed)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


@contextmanager
def running_server(data: Path, index_dir: Path, log_path: Path, *extra: str) -> Iterator[str]:
    """`medalign-rag serve --backend none` on a free loopback port; yields its base URL; stops it afterwards.

    Its stdout and stderr (the whole server log) go to `log_path`.
    """
    port = free_port()
    command = [sys.executable, "-m", "medalign_rag.cli", "serve", "--data", str(data), "--index-dir", str(index_dir),
               "--backend", "none", "--host", "127.0.0.1", "--port", str(port), *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                # 401 also means it is up (a token is set); anything answering will do.
                if httpx.get(f"{base_url}/api/health", timeout=2).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve not ready after {READY_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
