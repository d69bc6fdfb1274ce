"""Issue 9.1: `bench` into the same output folder after a record changed recomputes exactly the items of that record.

Before the fix (commit d73d475) the result key covered the instruction and the settings but not the record, so
after a gold event was deleted the old coverage (1.0) was reused, while a fresh folder gave less: the assertions
on the changed patient fail there.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medalign_rag.config import RunConfig
from medalign_rag.evaluation.ablation import run_ablation
from medalign_rag.index.builder import IndexSettings
from medalign_rag.records.serialize import write_release_xml
from tests import robust_data

STRATEGIES = ["oracle", "recency"]
BUDGETS = [1024, 4096]


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def by_item(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["instruction_id"], r["strategy"], r["budget"]): r for r in rows}


@pytest.fixture
def setup(tmp_path):
    records = robust_data.small_records(2)
    instructions = robust_data.instructions_for(records)
    data = robust_data.write_folder(tmp_path / "data", records, instructions)
    config = RunConfig(name="stale", data=data, index=IndexSettings(index_dir=tmp_path / "idx"),
                       strategies=STRATEGIES, budgets=BUDGETS, bootstrap_resamples=50)
    return tmp_path, records, instructions, data, config


def test_a_changed_record_recomputes_its_items_and_only_those(setup):
    tmp_path, records, instructions, data, config = setup
    out = tmp_path / "run"
    run_ablation(config, out)
    first = results(out)
    per_pass = len(instructions) * len(STRATEGIES) * len(BUDGETS)
    assert len(first) == per_pass

    # the oracle finds both gold events of rb-1's first instruction; then one of them is deleted from the record
    target = next(i for i in instructions if i.instruction_id == "rb-1-q0")
    assert len(target.evidence_event_ids) == 2
    assert by_item(first)[("rb-1-q0", "oracle", 4096)]["evidence_coverage"] == 1.0
    changed = robust_data.drop_event(records[0], target.evidence_event_ids[0])
    write_release_xml(changed, data / "ehrs" / "rb-1.xml")

    run_ablation(config, out)
    rows = results(out)
    rb1_items = sum(1 for i in instructions if i.patient_id == "rb-1") * len(STRATEGIES) * len(BUDGETS)
    assert len(rows) == per_pass + rb1_items  # appended: rb-1's items only
    appended = rows[per_pass:]
    assert {r["patient_id"] for r in appended} == {"rb-1"}
    latest = by_item(rows)  # later lines win, as the store reads them
    assert latest[("rb-1-q0", "oracle", 4096)]["evidence_coverage"] == 0.5
    for key, row in by_item(first).items():
        if row["patient_id"] == "rb-2":  # reused as stored, not recomputed
            assert latest[key] == row

    # what the resumed folder reports is what a fresh folder reports
    fresh = tmp_path / "fresh"
    run_ablation(config, fresh)
    fresh_items = by_item(results(fresh))
    for key, row in latest.items():
        assert row["evidence_coverage"] == fresh_items[key]["evidence_coverage"], key
        assert row["context_tokens"] == fresh_items[key]["context_tokens"], key
    assert summary_without_timings(out) == summary_without_timings(fresh)


def summary_without_timings(out: Path) -> list[dict]:
    """summary.csv minus the columns that measure time (those differ between any two runs)."""
    with open(out / "summary.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if "seconds" not in k and "_ms" not in k and "latency" not in k}
                for row in csv.DictReader(handle)]
