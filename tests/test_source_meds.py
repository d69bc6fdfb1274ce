"""MEDS record source: folders the tests build (from the MIMIC-IV demo's MEDS event stream and by hand)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("meds")

from medalign_rag.errors import MedalignError  # noqa: E402
from medalign_rag.records.model import EventKind  # noqa: E402
from medalign_rag.records.sources import open_source  # noqa: E402
from medalign_rag.records.sources.meds import MedsSource  # noqa: E402

DATA_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
    ("numeric_value", pa.float32()), ("text_value", pa.large_string()),
])


def write_meds(folder: Path, shards: dict[str, list[dict]], codes: dict[str, str] | None = None,
               row_group_size: int = 4) -> Path:
    """A MEDS folder: data/<shard>.parquet (small row groups, to exercise the subject index) + metadata."""
    for name, rows in shards.items():
        path = folder / "data" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = {field.name: [row.get(field.name) for row in rows] for field in DATA_SCHEMA}
        pq.write_table(pa.table(columns, schema=DATA_SCHEMA), path, row_group_size=row_group_size)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    (folder / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": "test", "meds_version": "0.4"}))
    if codes:
        pq.write_table(pa.table({"code": list(codes), "description": list(codes.values()),
                                 "parent_codes": [[] for _ in codes]}), folder / "metadata" / "codes.parquet")
    return folder


def _row(subject, time, code, value=None, text=None):
    return {"subject_id": subject, "time": time, "code": code, "numeric_value": value, "text_value": text}


def hand_made(folder: Path) -> Path:
    t = datetime
    return write_meds(folder, {
        "train/0": [
            _row(7, None, "GENDER//F"),
            _row(7, t(1960, 5, 1), "MEDS_BIRTH"),
            _row(7, t(2020, 1, 2, 8), "LOINC/4548-4", 7.2),
            _row(7, t(2020, 3, 1, 9), "HOSPITAL_ADMISSION//EMERGENCY"),
            _row(7, t(2020, 3, 1, 10), "LAB//50912//mg/dL", 1.1),
            _row(7, t(2020, 3, 2, 11), "ICD10CM/E11.9"),
            _row(7, t(2020, 3, 2, 12), "NOTE//discharge", text="Discharged home on metformin."),
            _row(7, t(2020, 3, 3, 9), "HOSPITAL_DISCHARGE//HOME"),
            _row(7, t(2020, 4, 5, 9), "RxNorm/860975", text="500 mg"),
        ],
        "held_out/0": [
            _row(8, t(2019, 6, 1, 7), "SNOMED/38341003"),
            _row(8, t(2019, 6, 1, 8), "Visit/OP"),
        ],
    }, codes={"LOINC/4548-4": "Hemoglobin A1c", "LAB//50912//mg/dL": "Creatinine", "ICD10CM/E11.9":
              "Type 2 diabetes mellitus without complications"})


def test_hand_made_meds_folder(tmp_path: Path) -> None:
    source = open_source(hand_made(tmp_path / "meds"))
    assert isinstance(source, MedsSource)
    assert source.patient_ids() == ["7", "8"]
    record = source.load_record("7")
    assert record.demographics.gender == "F" and record.demographics.birthdate == datetime(1960, 5, 1)
    by_name = {event.name: (encounter, event) for encounter, event in record.iter_events()}
    encounter, a1c = by_name["Hemoglobin A1c"]
    assert (a1c.kind, a1c.value, a1c.code) == (EventKind.measurement, "7.2", "LOINC/4548-4")
    assert encounter.encounter_id == "7-day-20200102"  # outside any visit: grouped by its day
    encounter, creatinine = by_name["Creatinine"]
    assert (creatinine.value, creatinine.unit) == ("1.1", "mg/dL")
    assert encounter.start == datetime(2020, 3, 1, 9) and encounter.end == datetime(2020, 3, 3, 9)
    assert by_name["Type 2 diabetes mellitus without complications"][0] is encounter
    note = next(event for _, event in record.iter_events() if event.kind is EventKind.note)
    assert note.text == "Discharged home on metformin." and by_name[note.name][0] is encounter
    drug = next(event for _, event in record.iter_events() if event.kind is EventKind.drug)
    assert drug.value == "500 mg" and drug.timestamp == datetime(2020, 4, 5, 9)
    assert [e.type for e in record.encounters] == ["day without a visit", "hospital admission (EMERGENCY)",
                                                   "day without a visit"]
    other = source.load_record("8")
    assert [e.type for e in other.encounters] == ["day without a visit", "visit (OP)"]
    # Fingerprints are per patient: changing patient 8's shard leaves patient 7's alone.
    before = {pid: source.fingerprint(pid) for pid in ("7", "8")}
    write_meds(tmp_path / "meds", {"held_out/0": [_row(8, datetime(2019, 6, 1, 7), "SNOMED/38341003")]})
    after = MedsSource(tmp_path / "meds")
    assert after.fingerprint("7") == before["7"] and after.fingerprint("8") != before["8"]


def test_reads_only_the_subjects_row_groups(tmp_path: Path) -> None:
    rows = [_row(s, datetime(2020, 1, 1 + i), "LOINC/1-1", float(i)) for s in range(1, 30) for i in range(5)]
    source = MedsSource(write_meds(tmp_path / "m", {"train/0": rows}, row_group_size=10))
    index = source._subject_index()
    # 5 rows per subject in groups of 10: each subject is one run, or two when a group boundary splits it.
    assert all(1 <= len(locations) <= 2 and sum(loc.length for loc in locations) == 5 for locations in index.values())
    assert [e.value for _, e in source.load_record("17").iter_events()] == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("problem", ["string subject ids", "no time column", "not parquet", "no data folder"])
def test_malformed_meds_is_one_clear_error(tmp_path: Path, problem: str) -> None:
    folder = tmp_path / "bad"
    (folder / "data").mkdir(parents=True)
    (folder / "metadata").mkdir()
    (folder / "metadata" / "dataset.json").write_text("{}")
    shard = folder / "data" / "0.parquet"
    if problem == "string subject ids":
        pq.write_table(pa.table({"subject_id": ["a"], "time": pa.array([None], pa.timestamp("us")), "code": ["X"]}),
                       shard)
    elif problem == "no time column":
        pq.write_table(pa.table({"subject_id": pa.array([1], pa.int64()), "code": ["X"]}), shard)
    elif problem == "not parquet":
        shard.write_text("subject_id,time,code\n1,,X\n")
    else:
        (folder / "data").rmdir()
    with pytest.raises(MedalignError) as caught:
        MedsSource(folder)
    message = str(caught.value)
    assert "\n" not in message
    if problem != "no data folder":
        assert str(shard) in message
    if problem == "string subject ids":
        assert "subject_id" in message


# ------------------------------------------------------------------------------- the MIMIC-IV demo as MEDS


@pytest.fixture(scope="module")
def mimic_meds(tmp_path_factory) -> Path:
    """The demo's MEDS event stream as a MEDS dataset: two shards, names from the demo's item dictionaries."""
    from tests.conftest import SHARED_DATA

    events = SHARED_DATA / "mimic_iv_demo_meds" / "mimic_iv_demo_meds_events.parquet"
    if not events.is_file():
        pytest.skip(f"public data not found at {events}")
    import pandas as pd

    table = pq.read_table(events, columns=["subject_id", "time", "code", "value"])
    frame = table.to_pandas()
    subjects = sorted(frame["subject_id"].unique())
    labels = {}
    for dictionary in ("hosp/d_labitems.csv.gz", "icu/d_items.csv.gz"):
        items = pd.read_csv(SHARED_DATA / "mimic_iv_demo" / dictionary, usecols=["itemid", "label"])
        labels.update(dict(zip(items["itemid"].astype(str), items["label"])))
    codes = {}
    for code in frame["code"].unique():
        parts = code.split("//")
        if parts[0] == "LAB" and len(parts) > 1 and parts[1] in labels:
            codes[code] = labels[parts[1]]
    folder = tmp_path_factory.mktemp("mimic_meds")
    half = len(subjects) // 2
    for name, chosen in (("train/0", subjects[:half]), ("held_out/0", subjects[half:])):
        part = frame[frame["subject_id"].isin(chosen)].sort_values(["subject_id", "time"], kind="stable")
        out = pa.table({
            "subject_id": pa.array(part["subject_id"], pa.int64()),
            "time": pa.array(part["time"], pa.timestamp("us")),
            "code": pa.array(part["code"], pa.string()),
            "numeric_value": pa.array(part["value"], pa.float32()),
            "text_value": pa.array([None] * len(part), pa.large_string()),
        })
        path = folder / "data" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(out, path, row_group_size=50_000)
    write_meds(folder, {}, codes=codes)
    return folder


@pytest.mark.shared_data
def test_mimic_demo_meds_matches_converted_records(mimic_meds: Path) -> None:
    """All 100 patients: every numeric lab and chart event of the converted (CSV + MEDS) records is in the MEDS
    read, at the same time with the same value (and the same name for chart events), and hospital admissions are
    the same visits."""
    from tests.source_data import converted_mimic_records

    converted = converted_mimic_records()
    source = open_source(mimic_meds)
    assert source.patient_ids() == sorted(converted, key=lambda v: (len(v), v))
    compared = {"chart": 0, "lab": 0}
    missing_labs = 0
    for patient_id, theirs in converted.items():
        ours = source.load_record(patient_id)
        measured = {(e.timestamp, e.value) for _, e in ours.iter_events() if e.value is not None}
        named = {(e.timestamp, e.name, e.value) for _, e in ours.iter_events() if e.value is not None}
        for _, event in theirs.iter_events():
            prefix = event.event_id.split("-")[0]
            if prefix == "chart":
                compared["chart"] += 1
                assert (event.timestamp, event.name, event.value) in named, (patient_id, event)
            elif prefix == "lab" and event.value is not None and _is_number(event.value):
                compared["lab"] += 1
                missing_labs += (event.timestamp, _canonical(event.value)) not in measured
        admissions = sorted(e.start for e in theirs.encounters if e.encounter_id.startswith("hadm-"))
        visits = sorted(e.start for e in ours.encounters if e.type.startswith("hospital admission"))
        assert visits == admissions, patient_id
    assert compared["chart"] > 100_000 and compared["lab"] > 50_000
    # Lab values in the CSV are text ("7.20"), MEDS stores float32: compared in float32's shortest form.
    assert missing_labs == 0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _canonical(text: str) -> str:
    import numpy as np

    return np.format_float_positional(np.float32(float(text)), trim="-", unique=True)
