"""The command line as a user runs it: real subprocesses, real files, exit codes and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medalign_rag.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    result = cli("synth", "--out", str(out), "--patients", "4", "--seed", "7")
    assert result.returncode == 0, result.stderr
    return out


def test_synth_is_deterministic_and_inspect_reports_every_patient(cohort, tmp_path):
    again = tmp_path / "again"
    assert cli("synth", "--out", str(again), "--patients", "4", "--seed", "7").returncode == 0
    for path in sorted(cohort.rglob("*.*")):
        twin = again / path.relative_to(cohort)
        assert twin.read_bytes() == path.read_bytes(), path.name

    result = cli("inspect", "--data", str(cohort), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [p["patient_id"] for p in payload["patients"]] == [f"990000000000{i}" for i in range(1, 5)]
    assert all(p["encounters"] > 0 and p["events"] > 0 and p["tokens"] > 0 for p in payload["patients"])
    assert payload["instructions"] > 0


def test_inspect_reads_the_public_medalign_sample(shared_data):
    result = cli("inspect", "--data", str(shared_data / "medalign_sample"), "--json")
    assert result.returncode == 0, result.stderr
    (patient,) = json.loads(result.stdout)["patients"]
    assert patient["encounters"] == 3 and patient["notes"] == 5


@pytest.mark.parametrize(
    "content, expected",
    [
        ("<record><visit type='x' start='01/01/2020 10:00'>", "line"),
        ("<patient></patient>", "layout"),
        ("<eventstream person_id='p'></eventstream>", "encounter"),
    ],
)
def test_bad_records_give_one_line_errors_naming_the_file(tmp_path, content, expected):
    (tmp_path / "ehrs").mkdir()
    (tmp_path / "ehrs" / "bad.xml").write_text(content)
    result = cli("inspect", "--data", str(tmp_path), "--json")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "bad.xml" in result.stderr and expected in result.stderr.lower()
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_a_path_like_patient_id_is_refused(cohort):
    result = cli("ask", "--data", str(cohort), "--patient", "../x", "anything", "--backend", "none")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "../x" in result.stderr


def test_missing_instruction_column_is_named(cohort, tmp_path):
    (tmp_path / "ehrs").mkdir()
    (tmp_path / "ehrs" / "p.xml").write_bytes((cohort / "medalign_ehr_xml" / "9900000000001.xml").read_bytes())
    (tmp_path / "clinician-instruction-responses.tsv").write_text("instruction_id\tperson_id\n1\tp\n")
    result = cli("inspect", "--data", str(tmp_path), "--json")
    assert result.returncode != 0
    assert "question" in result.stderr and "clinician-instruction-responses.tsv" in result.stderr


def test_index_then_ask_every_strategy_stays_within_budget(cohort, tmp_path):
    index_dir = tmp_path / "idx"
    first = cli("index", "--data", str(cohort), "--index-dir", str(index_dir), "--json")
    assert first.returncode == 0, first.stderr
    assert {r["status"] for r in json.loads(first.stdout)["results"]} == {"built"}
    second = cli("index", "--data", str(cohort), "--index-dir", str(index_dir), "--json")
    assert {r["status"] for r in json.loads(second.stdout)["results"]} == {"skipped"}

    # in-process from here on, so the embedding model loads once (the subprocess path is covered above)
    from typer.testing import CliRunner

    from medalign_rag.cli import app

    runner = CliRunner()
    for strategy in ("full", "recency", "bm25", "dense", "hybrid", "temporal", "oracle"):
        for budget in (2048, 32768):
            result = runner.invoke(app, ["ask", "--data", str(cohort), "--index-dir", str(index_dir), "--patient",
                                         "9900000000001", "What was the most recent hemoglobin A1c?", "--strategy",
                                         strategy, "--budget", str(budget), "--backend", "none", "--json"])
            assert result.exit_code == 0, result.output
            payload = json.loads(result.stdout)
            assert payload["strategy"] == strategy and payload["budget"] == budget
            assert 0 < payload["context_tokens"] <= budget
            assert payload["answer"] is None
            assert payload["chunk_ids"] and payload["event_ids"] and payload["citations"]
            assert {"encounter_id", "encounter_type", "start"} <= set(payload["citations"][0])
