"""Hostile arguments for every command, run as a user runs them (a subprocess): each must end with an exit code
other than 0, exactly one line on stderr, and no traceback.

The table covers the classes issue 9 found (unknown strategies, bad budgets, timezone anchors, unsafe ids and
config names, invalid settings, missing or malformed files) and the plain usage errors around them. The cases fail
before any model loads, so the table runs in parallel subprocesses in a few seconds of CPU each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from medalign_rag.datasets.synthetic import generate_cohort

pytestmark = pytest.mark.slow  # a process start per case

ENV = {key: value for key, value in os.environ.items() if key not in ("MEDALIGN_DEBUG", "MEDALIGN_PROGRESS")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A one-patient cohort plus the broken files the table points at."""
    root = tmp_path_factory.mktemp("hostile")
    generate_cohort(root / "cohort", n_patients=1, seed=3)
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not a data folder\n")
    (root / "bad_xml" / "ehrs").mkdir(parents=True)
    (root / "bad_xml" / "ehrs" / "p1.xml").write_bytes(b"<eventstream person_id='p1'><encounter")
    configs = {
        "bad_yaml.yaml": "name: x\ndata: [unclosed\n",
        "escape_name.yaml": "name: ../../escaped\ndata: cohort\n",
        "windows.yaml": "name: x\ndata: cohort\nindex: {window_tokens: 32, overlap_tokens: 32}\n",
        "missing_data.yaml": "name: x\ndata: nowhere\n",
        "valid.yaml": "name: valid\ndata: cohort\nstrategies: [recency]\nbudgets: [1024]\n",
        "bad_backend.yaml": "name: x\ndata: cohort\nbackend: openai\nbackend_options: {base_url: 'http://192.0.2.1:9/v1'}\n",
        "bad_prompt.yaml": "name: x\ndata: cohort\nprompt_template: prompt.yaml\n",
    }
    for name, text in configs.items():
        (root / name).write_text(text)
    (root / "prompt.yaml").write_text("name: p\ntemplate: 'no placeholders here {oops}'\n")
    (root / "tasks.csv").write_bytes(b"\xff\xfe\x00garbage")
    return root


ASK = ("ask", "--data", "cohort", "--patient", "9900000000001")
# Each case costs a process start (about 2 s of CPU, most of it importing llama-index for the strategy list), so
# the table keeps one case per class; YAML-config validation has its finer cases in-process in test_robustness.py.
HOSTILE: dict[str, tuple[str, ...]] = {
    "synth zero patients": ("synth", "--out", "out", "--patients", "0"),
    "synth into a file": ("synth", "--out", "notes.txt/x", "--patients", "1"),
    "inspect missing folder": ("inspect", "--data", "nowhere"),
    "inspect malformed xml": ("inspect", "--data", "bad_xml"),
    "inspect path-like patient": ("inspect", "--data", "cohort", "--patient", "../../etc/passwd"),
    "index empty folder": ("index", "--data", "empty"),
    "ask unknown strategy": (*ASK, "q", "--strategy", "telepathy", "--backend", "none"),
    "ask zero budget": (*ASK, "q", "--budget", "0", "--backend", "none"),
    "ask empty question": (*ASK, "", "--backend", "none"),
    "ask bad time anchor": (*ASK, "q", "--time-anchor", "yesterday-ish", "--backend", "none"),
    "ask unknown backend": (*ASK, "q", "--backend", "telepathy"),
    "ask malformed config": (*ASK, "q", "--config", "bad_yaml.yaml"),
    "ask unknown patient": ("ask", "--data", "cohort", "--patient", "nobody", "q", "--backend", "none"),
    "ask no question": ASK,
    "ask plain http elsewhere": (*ASK, "q", "--config", "bad_backend.yaml"),
    "bench missing config": ("bench", "--config", "missing.yaml"),
    "bench name escapes runs/": ("bench", "--config", "escape_name.yaml"),
    "bench windows do not advance": ("bench", "--config", "windows.yaml"),
    "bench max instructions zero": ("bench", "--config", "valid.yaml", "--max-instructions", "0"),
    "bench missing data": ("bench", "--config", "missing_data.yaml", "--out", "runs/missing"),
    "bench bad prompt template": ("bench", "--config", "bad_prompt.yaml", "--out", "runs/prompt"),
    "demo unknown backend": ("demo", "--backend", "telepathy", "--out", "demo"),
    "convert mimic missing source": ("convert", "mimic-iv-demo", "--src", "nowhere", "--out", "converted"),
    "convert fhir undecodable tasks": ("convert", "fhir-agentbench", "--tasks", "tasks.csv", "--data", "cohort",
                                       "--src", "nowhere"),
    "unknown command": ("telepathy",),
}
def run_cli(args: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medalign_rag.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def outcomes(workspace) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_cli, args, workspace) for name, args in HOSTILE.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_arguments_fail_with_one_line(case, outcomes):
    result = outcomes[case]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, f"exit 0 for {HOSTILE[case]}\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error:"), lines[0]


def test_no_hostile_case_leaves_a_half_made_output_folder(outcomes, workspace):
    """A bench that fails on its config or its data must not leave runs/<name>/ behind with only config.yaml
    (issue 9.12; before, run_ablation wrote config.yaml first)."""
    runs = workspace / "runs"
    leftovers = sorted(str(p.relative_to(workspace)) for p in runs.rglob("*")) if runs.exists() else []
    assert leftovers == []
    assert not (workspace.parent / "escaped").exists() and not (workspace / "escaped").exists()
