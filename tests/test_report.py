"""summary.csv columns and report.md sections from item results (no model, no data)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medalign_rag.config import RunConfig
from medalign_rag.errors import MedalignError
from medalign_rag.evaluation.report import (
    declared_goal_statement,
    split_patients,
    summarize,
    write_report,
    write_summary_csv,
)
from medalign_rag.evaluation.runner import ItemResult

NEW_COLUMNS = ["coverage_patient_lo", "coverage_patient_hi", "coverage_macro", "coverage_all", "coverage_any",
               "diff_vs_full32k", "diff_vs_full32k_lo", "diff_vs_full32k_hi", "answer_presence"]
OLD_COLUMNS = ["strategy", "budget", "n", "n_with_evidence", "evidence_coverage", "evidence_coverage_lo",
               "evidence_coverage_hi", "context_tokens_mean"]


def _results(seed: int = 0, patients: int = 12, per_patient: int = 6) -> list[ItemResult]:
    """`temporal` beats `full` by a wide margin at 2k; `bm25` equals `full` at 32k question by question, +-."""
    rng = np.random.default_rng(seed)
    items = []
    for p in range(patients):
        level = rng.uniform(0.2, 0.6)
        for q in range(per_patient):
            qid, pid = f"q{p}-{q}", f"p{p:02d}"
            base = float(np.clip(level + rng.normal(0, 0.1), 0, 1))
            noise = float(rng.choice([-0.05, 0.05]))
            scores = {("full", 2048): base * 0.2, ("full", 32768): base,
                      ("temporal", 2048): min(1.0, base + 0.3), ("temporal", 32768): min(1.0, base + 0.4),
                      ("bm25", 2048): float(np.clip(base + noise, 0, 1)), ("bm25", 32768): min(1.0, base + 0.2)}
            for (strategy, budget), coverage in scores.items():
                items.append(ItemResult(
                    key=f"{qid}-{strategy}-{budget}", instruction_id=qid, patient_id=pid, strategy=strategy,
                    budget=budget, context_tokens=budget // 2, available_tokens=budget, n_chunks=3, n_gold_events=2,
                    evidence_coverage=coverage, coverage_all=float(coverage == 1.0), coverage_any=float(coverage > 0),
                    coverage_legacy_encounter=coverage * 0.9, answer_presence=1.0 if coverage > 0.5 else 0.0,
                    question_type="lab" if q % 2 else "medication", question_form="lookup", seconds_context=0.01,
                ))
    return items


def test_summary_has_old_and_new_columns_and_clustered_differences(tmp_path):
    results = _results()
    rows = summarize(results, resamples=300)
    path = tmp_path / "summary.csv"
    write_summary_csv(rows, path)
    header = next(csv.reader(path.open()))
    assert all(column in header for column in OLD_COLUMNS + NEW_COLUMNS)
    by_key = {(r["strategy"], r["budget"]): r for r in rows}
    temporal, full32 = by_key[("temporal", 2048)], by_key[("full", 32768)]
    assert temporal["diff_vs_full32k"] == pytest.approx(temporal["evidence_coverage"] - full32["evidence_coverage"])
    assert temporal["diff_vs_full32k_verdict"] == "better" and temporal["diff_vs_full32k_lo"] > 0
    assert full32["diff_vs_full32k"] == 0.0 and full32["diff_vs_full32k_verdict"] == "tie"
    assert by_key[("full", 2048)]["diff_vs_full32k_verdict"] == "worse"
    assert by_key[("bm25", 2048)]["diff_vs_full_verdict"] == "better"  # vs full at the same budget
    # Patients, not questions, are resampled: the clustered interval is the wider one.
    clustered = full32["coverage_patient_hi"] - full32["coverage_patient_lo"]
    assert clustered > full32["evidence_coverage_hi"] - full32["evidence_coverage_lo"]
    assert full32["coverage_legacy_encounter"] == pytest.approx(0.9 * full32["evidence_coverage"])
    assert full32["n_patients"] == 12 and full32["answer_presence_n"] == 72


def test_split_is_deterministic_patient_level_and_stable():
    patients = [f"p{i:02d}" for i in range(40)]
    tune, test = split_patients(patients, seed=0, test_fraction=0.25)
    assert len(test) == 10 and tune | test == set(patients) and not tune & test
    assert split_patients(list(reversed(patients)), seed=0, test_fraction=0.25) == (tune, test)
    assert split_patients(patients, seed=1, test_fraction=0.25)[1] != test
    # Adding a patient never moves an existing one from test to tune or back more than the quota needs.
    _, test_more = split_patients(patients + ["p99"], seed=0, test_fraction=0.25)
    assert len(test & test_more) >= 9
    with pytest.raises(MedalignError, match="test_fraction"):
        split_patients(patients, seed=0, test_fraction=1.0)


def test_report_declares_goal_on_test_part_and_has_every_section(tmp_path):
    results = _results()
    rows = summarize(results, resamples=200)
    patients = sorted({i.patient_id for i in results})
    split = split_patients(patients, seed=0, test_fraction=0.5)
    path = tmp_path / "report.md"
    write_report(rows, path, title="t", results=results, primary_strategy="bm25", split=split, resamples=200)
    text = path.read_text()
    goal = declared_goal_statement(results, "bm25", split[1], resamples=200)
    assert goal in text and "on the test part" in goal and "`bm25` at 2048" in goal
    # bm25 at 2k is full at 32k plus or minus noise: not shown to be better.
    assert "**TIE**" in goal
    for heading in ("Paired differences", "Coverage variants", "Encounter rule", "Answer presence",
                    "Coverage per question type", "Tune/test protocol"):
        assert f"## {heading}" in text, heading
    assert "| lab |" in text and "| medication |" in text
    assert "better" in text and "tie" in text


def test_config_declares_primary_strategy_and_split(tmp_path):
    config = RunConfig(data=tmp_path, strategies=["full", "temporal"], primary_strategy="temporal",
                       split={"seed": 3, "test_fraction": 0.3})
    assert config.split.test_fraction == 0.3
    with pytest.raises(ValueError, match="primary_strategy"):
        RunConfig(data=tmp_path, strategies=["full", "bm25"], primary_strategy="temporal")
    with pytest.raises(ValueError):
        RunConfig(data=tmp_path, split={"seed": 0, "test_fraction": 0.0})
