"""An installed wheel works outside the source tree: packaged prompt and demo config, `ask`, `demo --help`."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv (seeing this environment's dependencies) with our wheel installed, not the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist")], check=True, capture_output=True, text=True, timeout=600)
    wheel = next((root / "dist").glob("medalign_rag-*.whl"))
    venv.create(root / "venv", system_site_packages=True, with_pip=False)
    python = root / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    return python


def run_outside(python: Path, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_is_what_runs_and_it_loads_its_packaged_prompt(installed, tmp_path):
    code = ("import medalign_rag, medalign_rag.generation.prompt as p; "
            "print(medalign_rag.__file__); print(p.load_prompt_template().name)")
    result = run_outside(installed, tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr
    location, name = result.stdout.split()
    assert not Path(location).is_relative_to(REPO), f"imported the checkout, not the wheel: {location}"
    assert name == "medalign"


def test_installed_cli_runs_ask_and_demo_help_outside_the_checkout(installed, tmp_path):
    cli = installed.parent / "medalign-rag"
    assert cli.is_file()
    assert run_outside(installed, tmp_path, str(cli), "demo", "--help").returncode == 0
    synth = run_outside(installed, tmp_path, str(cli), "synth", "--out", "cohort", "--patients", "2", "--seed", "3")
    assert synth.returncode == 0, synth.stderr
    asked = run_outside(installed, tmp_path, str(cli), "ask", "--data", "cohort", "--patient", "9900000000001",
                        "--index-dir", "idx", "--backend", "none", "--budget", "2048", "--json",
                        "What was the most recent hemoglobin A1c?")
    assert asked.returncode == 0, asked.stderr
    payload = json.loads(asked.stdout)
    assert payload["context_tokens"] <= 2048 and payload["event_ids"] and payload["citations"]
