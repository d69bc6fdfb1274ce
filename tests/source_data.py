"""Data shared by the record-source tests, built once per test session."""

from __future__ import annotations

from functools import lru_cache

import pytest

from tests.conftest import SHARED_DATA

MIMIC_DEMO = SHARED_DATA / "mimic_iv_demo"
MIMIC_MEDS_EVENTS = SHARED_DATA / "mimic_iv_demo_meds" / "mimic_iv_demo_meds_events.parquet"


@lru_cache(maxsize=1)
def _converted() -> dict:
    from medalign_rag.datasets.mimic_iv_demo import build_records, load_mimic_events

    return {record.patient_id: record for record in build_records(load_mimic_events(MIMIC_DEMO, MIMIC_MEDS_EVENTS))}


def converted_mimic_records() -> dict:
    """patient id -> PatientRecord of all 100 MIMIC-IV demo patients, as `convert mimic-iv-demo` builds them."""
    if not MIMIC_DEMO.is_dir() or not MIMIC_MEDS_EVENTS.is_file():
        pytest.skip(f"MIMIC-IV demo not found under {SHARED_DATA}")
    return _converted()
