"""Nothing leaves the machine: `index`, `ask` and `bench` with the `none` and `local` backends succeed inside a
network namespace with no network (`unshare -n`, which needs root, as in CI; skipped where it is not permitted),
and no command asks a model hub for anything (issue 9.5).

The subprocesses get an environment WITHOUT HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE: the CLI must set offline mode
itself, before any model library is imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import robust_data
from tests.http_recorder import start_recorder

pytestmark = pytest.mark.slow  # loads the embedding model and SmolLM2 in several processes

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def user_environment(**extra: str) -> dict[str, str]:
    """The environment of a user who set nothing: no offline switches, no debug or progress settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in OFFLINE_VARIABLES and k not in ("MEDALIGN_DEBUG", "MEDALIGN_PROGRESS")}
    # the worktree under test first (the installed package may point at another checkout)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def cli(*args: str, cwd: Path, no_network: bool = False, env: dict[str, str] | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "medalign_rag.cli", *args]
    if no_network:
        command = ["unshare", "-n", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env or user_environment(),
                          timeout=timeout)


def network_namespace_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-n", sys.executable, "-c",
                            "import socket; s = socket.socket(); s.settimeout(2); "
                            "raise SystemExit(0 if s.connect_ex(('192.0.2.1', 80)) else 1)"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0  # could not connect anywhere: there is no network in there


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("egress")
    robust_data.write_folder(root / "data", robust_data.small_records(2))
    (root / "none.yaml").write_text("name: egress-none\ndata: data\nindex: {index_dir: idx}\n"
                                    "strategies: [recency, bm25]\nbudgets: [1024]\nbackend: none\n"
                                    "bootstrap_resamples: 20\n")
    (root / "local.yaml").write_text("name: egress-local\ndata: data\nindex: {index_dir: idx}\n"
                                     "strategies: [recency]\nbudgets: [1024]\nbackend: local\nmax_instructions: 1\n"
                                     "max_new_tokens: 8\nbootstrap_resamples: 20\n")
    return root


def test_index_ask_and_bench_run_with_no_network(workspace):
    if not network_namespace_available():
        pytest.skip("cannot make a network namespace here (unshare -n needs root)")
    built = cli("index", "--data", "data", "--index-dir", "idx", "--json", cwd=workspace, no_network=True)
    assert built.returncode == 0, built.stderr
    assert {r["status"] for r in json.loads(built.stdout)["results"]} == {"built"}

    ask = ("ask", "--data", "data", "--index-dir", "idx", "--patient", "rb-1", "What was the most recent lab?",
           "--budget", "1024")
    runs = {
        "ask none": (*ask, "--backend", "none", "--json"),
        "ask local": (*ask, "--config", "local.yaml", "--json"),
        "bench none": ("bench", "--config", "none.yaml", "--out", "runs/none"),
        "bench local": ("bench", "--config", "local.yaml", "--out", "runs/local"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(cli, *args, cwd=workspace, no_network=True) for name, args in runs.items()}
        outcomes = {name: future.result() for name, future in futures.items()}
    for name, result in outcomes.items():
        assert result.returncode == 0, f"{name}:\n{result.stderr}"
        assert "Traceback" not in result.stderr, name
    assert json.loads(outcomes["ask none"].stdout)["answer"] is None
    answered = json.loads(outcomes["ask local"].stdout)
    assert answered["answer"] is not None and answered["completion_tokens"] > 0
    for name in ("none", "local"):
        assert (workspace / "runs" / name / "summary.csv").is_file()
    local_results = (workspace / "runs" / "local" / "results.jsonl").read_text().splitlines()
    assert any(json.loads(line)["answer"] for line in local_results)


def test_a_hub_model_name_makes_no_request_and_says_it_is_not_on_disk(workspace):
    """9.5. HF_ENDPOINT points at a recording server here: before the fix offline mode was set only when the
    embedder loaded, after the local backend had already asked the hub for the model (one request recorded)."""
    recorder, server = start_recorder()
    try:
        (workspace / "hub.yaml").write_text("name: hub\ndata: data\nbackend: local\n"
                                            "backend_options: {model: some-org/not-on-disk-model}\n")
        result = cli("ask", "--data", "data", "--patient", "rb-1", "q?", "--config", "hub.yaml", cwd=workspace,
                     env=user_environment(HF_ENDPOINT=recorder.url(path="")))
    finally:
        server.shutdown()
        server.server_close()
    assert recorder.requests == []
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "some-org/not-on-disk-model" in lines[0] and "offline" in lines[0]
