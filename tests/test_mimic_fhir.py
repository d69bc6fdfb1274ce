"""MIMIC-IV demo -> timelines, and FHIR-AgentBench gold evidence -> our event ids (needs ../shared/data)."""

from __future__ import annotations

import gzip
import json
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from medalign_rag.datasets.fhir_agentbench import (
    category_from_template,
    convert_fhir_agentbench,
    fhir_resource_id,
    parse_time_anchor,
    read_tasks,
)
from medalign_rag.datasets.mimic_iv_demo import REQUIRED_TABLES, convert_mimic_iv_demo, format_chart_value
from medalign_rag.errors import MedalignError
from medalign_rag.records.instructions import read_instruction_table

# Two dev patients small enough to convert quickly whose questions' gold evidence spans every resource type we map:
# conditions, procedures, prescriptions, labs, ICU charts, outputs, microbiology (test/organism/susceptibility),
# admissions, ICU stays and a care unit (Location).
SUBJECTS = ["10007928", "10016150"]

# (namespace, key built from the source row, the id FHIR-AgentBench's dev.csv uses, our event id)
KNOWN_IDS = [
    ("Patient", "10029291", "7ec7078a-0593-5a99-9862-ebbff47fd1c5", "patient-10029291"),
    ("Encounter", "29974575", "ac3f7b4a-3199-5277-907e-d2b1b411a818", "adm-29974575"),
    ("EncounterICU", "35436337", "39f175ad-5bae-5cc5-9da8-3a968ae48254", "icu-35436337"),
    # A Medication (a drug concept): "drug--formulary_drug_cd--ndc" of the prescriptions row.
    (
        "MedicationPrescriptions", "Milk of Magnesia--MOM30L--00121043130", "3910de7b-9039-5d7b-a074-cbe9be0bd5c9",
        "rx-77601102",
    ),
    ("Condition", "27993466-5-I82412", "232f5934-8901-599f-aa2c-1dfceae9e3cc", "dx-27993466-5-I82412"),
    ("Procedure", "22205327-5-B548ZZA", "9780364b-459b-5f63-be17-3b39de7a5632", "px-22205327-5-B548ZZA"),
    ("MedicationRequest", "77601102", "ba3f9591-bd6c-5258-ae50-660b260300e0", "rx-77601102"),
    ("ObservationLabevents", "85466", "ea39d54d-946d-5d78-a07f-d9daddae513b", "lab-85466"),
    (
        "ObservationChartevents", "35128235-2129-04-06 00:04:00-220045-102", "cc4d204a-7726-53f3-bed9-c02c9fa70a83",
        "chart-35128235-212904060004-220045",
    ),
    (
        "ObservationChartevents", "37509585-2169-01-15 05:00:00-224639-97.4", "b968f757-2de1-5294-942d-4c566f1c9607",
        "chart-37509585-216901150500-224639",
    ),
    (
        "ObservationOutputevents", "37200209-2146-10-09 04:27:00-226560", "bf0e4c99-8849-5e71-9d8c-86b4a310fc58",
        "out-37200209-214610090427-226560",
    ),
    ("ObservationMicroTest", "2151831-90189", "82459100-971b-5df5-b590-8c11c6973d1b", "microtest-2151831-90189"),
    (
        "ObservationMicroOrg", "90268-5068876-80023", "f8c4c18e-0515-597f-97ae-730a8ee52067",
        "microorg-5068876-90268-80023",
    ),
    ("ObservationMicroSusc", "5844", "40ac30f2-bd79-587c-8c82-f7290a0aa3d0", "microsusc-5844"),
    ("Location", "Emergency Department", "501cd59a-cd8a-5f98-8298-2ca9c897d59f", None),
]

_CACHE: dict[str, object] = {}


def _paths(shared_data: Path) -> tuple[Path, Path, Path]:
    return (
        shared_data / "mimic_iv_demo",
        shared_data / "mimic_iv_demo_meds" / "mimic_iv_demo_meds_events.parquet",
        shared_data / "fhir_agentbench" / "dev.csv",
    )


@pytest.fixture
def fhir_dir(shared_data: Path, tmp_path_factory) -> Path:
    """FHIR-AgentBench questions of SUBJECTS converted once per session (records included)."""
    if "fhir" not in _CACHE:
        src, meds, tasks = _paths(shared_data)
        out = tmp_path_factory.mktemp("fhir_agentbench")
        resolution = convert_fhir_agentbench(tasks, out, src, meds, subject_ids=SUBJECTS)
        _CACHE["fhir"] = (out, resolution)
    return _CACHE["fhir"][0]


def _events_by_id(xml_path: Path) -> dict[str, ET.Element]:
    root = ET.parse(xml_path).getroot()
    events = {event.get("id"): event for event in root.iter("event")}
    assert len(events) == sum(1 for _ in root.iter("event")), "event ids must be unique within a record"
    return events


def _read_demo(src: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(src / f"{table}.csv.gz", dtype=str, keep_default_na=False, na_values=[""])


# ------------------------------------------------------------------------------------------ no data needed


def test_parse_time_anchor() -> None:
    text = "Assume the current time is 2133-12-31 23:59:00. When searching for values, ignore case."
    assert parse_time_anchor(text) == datetime(2133, 12, 31, 23, 59)
    assert parse_time_anchor("When searching for values in the database, ignore case.") is None
    assert parse_time_anchor(None) is None


def test_category_from_template() -> None:
    assert category_from_template("When was the [time_filter_exact1] microbiology test of patient {patient_id}?") == (
        "microbiology"
    )
    assert category_from_template("Count the number of times that patient {patient_id} received a {lab_name} lab "
                                  "test [time_filter_global1].") == "lab"
    assert category_from_template("What was the [agg_function] {vital_name} of patient {patient_id}?") == "vital"
    assert category_from_template("Count the number of drugs patient {patient_id} were prescribed.") == "medication"
    assert category_from_template("Count the number of ICU visits of patient {patient_id}.") == "icu_stay"
    assert category_from_template("What is the gender of patient {patient_id}?") == "demographics"
    assert category_from_template("Something else entirely") == "other"


def test_chart_values_format_like_fhir_keys() -> None:
    import numpy as np

    assert format_chart_value(np.float32(102.0)) == "102"
    assert format_chart_value(np.float32(97.4)) == "97.4"  # not 97.4000015258789
    assert format_chart_value(0.0) == "0"


@pytest.mark.parametrize(("namespace", "key", "fhir_id", "event_id"), KNOWN_IDS)
def test_fhir_resource_ids_reproduce_known_ids(namespace: str, key: str, fhir_id: str, event_id: str | None) -> None:
    assert fhir_resource_id(namespace, key) == fhir_id


# ------------------------------------------------------------------------------------------ with the data


def test_known_ids_occur_in_dev_questions(shared_data: Path) -> None:
    _, _, tasks_csv = _paths(shared_data)
    tasks = read_tasks(tasks_csv)
    gold = {fhir_id for task in tasks for ids in task.true_fhir_ids.values() for fhir_id in ids}
    gold |= {task.patient_fhir_id for task in tasks}
    for namespace, _key, fhir_id, _event in KNOWN_IDS:
        assert fhir_id in gold, f"{namespace} example not in dev.csv"


def test_records_carry_source_keys_names_values_and_units(shared_data: Path, fhir_dir: Path) -> None:
    src, _, _ = _paths(shared_data)
    events = _events_by_id(fhir_dir / "medalign_ehr_xml" / "10007928.xml")

    # Labs: id from labevent_id, name from d_labitems, value and unit from the row.
    labs = _read_demo(src, "hosp/labevents")
    labs = labs[(labs["subject_id"] == "10007928") & labs["value"].notna() & (labs["value"] != "___")]
    d_labitems = _read_demo(src, "hosp/d_labitems").set_index("itemid")
    lab = labs.iloc[0]
    element = events[f"lab-{lab['labevent_id']}"]
    assert element.get("name").startswith(d_labitems.loc[lab["itemid"], "label"])
    assert element.text == lab["value"].strip()
    assert element.get("unit") == (lab["valueuom"] if isinstance(lab["valueuom"], str) else None)
    assert element.get("type") == "measurement"
    assert sum(1 for event_id in events if event_id.startswith("lab-")) == len(
        _read_demo(src, "hosp/labevents").query("subject_id == '10007928'")
    )

    # Diagnoses: ICD titles from d_icd_diagnoses, code with its vocabulary.
    dx = events["dx-20338077-1-53140"]
    assert dx.get("name") == "Chronic or unspecified gastric ulcer with hemorrhage, without mention of obstruction"
    assert dx.get("code") == "ICD9CM/53140"
    assert dx.get("type") == "condition_occurrence"

    # ICU chart events from the MEDS file: label from d_items, value written as the source has it.
    heart_rate = events["chart-35128235-212904060004-220045"]
    assert (heart_rate.get("name"), heart_rate.text, heart_rate.get("unit")) == ("Heart Rate", "102", "bpm")

    # Outputs, prescriptions (with a diluent component), microbiology, ICU stay, transfers.
    void = events["out-35128235-212904060839-226560"]
    assert (void.get("name"), void.text, void.get("unit")) == ("Void", "400", "ml")
    prescription = events["rx-12132131"]
    assert (prescription.get("name"), prescription.get("value"), prescription.get("unit")) == (
        "0.9% Sodium Chloride", "1000", "mL",
    )
    assert prescription.text.startswith("IV")
    assert events["rx-27558242-2"].get("name") == "0.9% Sodium Chloride"
    assert events["microorg-3066970-90039-80002"].text == "ESCHERICHIA COLI"
    assert events["microsusc-2928"].get("name") == "ESCHERICHIA COLI susceptibility to AMPICILLIN"
    assert events["microsusc-2928"].get("value") == "S"
    assert "Medical Intensive Care Unit (MICU)" in events["icu-35128235"].text
    assert events["xfer-39661025"].text == "Emergency Department"

    # Admissions are encounters; the patient block carries demographics.
    root = ET.parse(fhir_dir / "medalign_ehr_xml" / "10007928.xml").getroot()
    encounter_ids = [encounter.get("id") for encounter in root.iter("encounter")]
    assert "hadm-20338077" in encounter_ids
    hadm = next(e for e in root.iter("encounter") if e.get("id") == "hadm-20338077")
    assert hadm.get("type") == "inpatient"
    assert any(event.get("id") == "adm-20338077" for event in hadm.iter("event"))
    assert root.find("encounter/person/gender").text in {"Female", "Male"}


def test_redacted_lab_values_fall_back_to_valuenum(shared_data: Path, fhir_dir: Path) -> None:
    """"___" in `value` with a number in `valuenum`: the number, its unit, range and flag reach the record."""
    src, _, _ = _paths(shared_data)
    labs = _read_demo(src, "hosp/labevents")
    labs = labs[labs["subject_id"].isin(SUBJECTS)]
    redacted = labs[(labs["value"] == "___") & labs["valuenum"].notna()]
    assert len(redacted) > 10
    records = {subject: _events_by_id(fhir_dir / "medalign_ehr_xml" / f"{subject}.xml") for subject in SUBJECTS}
    for row in redacted.itertuples():
        element = records[row.subject_id][f"lab-{row.labevent_id}"]
        assert float(element.get("value")) == pytest.approx(float(row.valuenum))
        assert element.get("unit") == (row.valueuom if isinstance(row.valueuom, str) else None)
        if isinstance(row.ref_range_lower, str):
            assert f"reference range {float(row.ref_range_lower):g}-" in element.text
        assert ("abnormal" in (element.text or "")) == (row.flag == "abnormal")
        assert "___" not in element.get("value")
    # Everything else in the record keeps the reported text.
    plain = labs[labs["value"].notna() & (labs["value"] != "___")].head(50)
    for row in plain.itertuples():
        assert records[row.subject_id][f"lab-{row.labevent_id}"].text == row.value.strip()


def test_patient_demographics_event(shared_data: Path, fhir_dir: Path) -> None:
    src, _, _ = _paths(shared_data)
    patients = _read_demo(src, "hosp/patients").set_index("subject_id")
    for subject in SUBJECTS:
        root = ET.parse(fhir_dir / "medalign_ehr_xml" / f"{subject}.xml").getroot()
        stamps = [entry.get("timestamp") for entry in root.iter("entry")]
        entry = next(e for e in root.iter("entry") if any(ev.get("id") == f"patient-{subject}" for ev in e))
        assert entry.get("timestamp") == min(stamps)  # dated at the first recorded event: no anchor hides it
        event = next(ev for ev in entry if ev.get("id") == f"patient-{subject}")
        gender = {"F": "Female", "M": "Male"}[patients.loc[subject, "gender"]]
        assert event.text == f"gender {gender}; age {patients.loc[subject, 'anchor_age']} in " \
                             f"{patients.loc[subject, 'anchor_year']}"


def test_outpatient_days_and_direct_conversion_agree(shared_data: Path, fhir_dir: Path, tmp_path: Path) -> None:
    src, meds, _ = _paths(shared_data)
    summary = convert_mimic_iv_demo(src, meds, tmp_path, subject_ids=["10016150"])
    assert summary.n_patients == 1
    assert summary.events_by_table["omr"] > 0 and summary.events_by_table["chartevents"] > 0
    written = (tmp_path / "medalign_ehr_xml" / "10016150.xml").read_bytes()
    # Same conversion through the FHIR-AgentBench path: byte-identical (ids are deterministic).
    assert written == (fhir_dir / "medalign_ehr_xml" / "10016150.xml").read_bytes()
    events = _events_by_id(tmp_path / "medalign_ehr_xml" / "10016150.xml")
    bp = events["omr-10016150-21410710-1-blood-pressure"]
    assert (bp.get("name"), bp.text) == ("Blood Pressure", "138/83")
    root = ET.parse(tmp_path / "medalign_ehr_xml" / "10016150.xml").getroot()
    outpatient = [e for e in root.iter("encounter") if e.get("id").startswith("outpatient-10016150-")]
    assert outpatient and all(e.get("type") == "outpatient" for e in outpatient)
    starts = [e.get("start_timestamp") for e in root.iter("encounter")]
    assert starts == sorted(starts)


def test_converted_folder_ships_the_demo_dictionaries_as_its_vocabulary(shared_data: Path, fhir_dir: Path,
                                                                        tmp_path: Path) -> None:
    """d_items / d_labitems travel with the records, so retrieval reads the source's own abbreviations with no
    extra setting."""
    from medalign_rag.records.sources import open_source

    src, meds, _ = _paths(shared_data)
    convert_mimic_iv_demo(src, meds, tmp_path, subject_ids=["10016150"])
    for out in (tmp_path, fhir_dir):
        copied = sorted(p.name for p in (out / "vocabulary").iterdir())
        assert copied == ["d_items.csv.gz", "d_labitems.csv.gz"]
        terms = open_source(out).vocabulary_terms()
        by_label = {term.label: term for term in terms}
        assert "Heart Rate" in by_label and "HR" in by_label["Heart Rate"].abbreviations
        assert any(term.label.startswith("Potassium") and term.table == "lab test" for term in terms)


def test_evidence_resolution(shared_data: Path, fhir_dir: Path) -> None:
    _, resolution = _CACHE["fhir"]
    report = json.loads((fhir_dir / "evidence_resolution.json").read_text())
    assert report == resolution.to_json_dict()
    for resource_type in ("Condition", "Procedure", "MedicationRequest", "Encounter", "Location", "Patient",
                          "Medication"):
        if resource_type in report:
            assert report[resource_type]["resolved"] == report[resource_type]["ids"] > 0
    assert report["Observation"]["resolved"] >= 0.99 * report["Observation"]["ids"]
    assert "Encounter" in report["rules"] and "Encounter (legacy)" in report["rules"]
    assert report["questions"] == 60
    assert report["questions_with_evidence"] > 40
    assert report["questions_resolved"] >= 0.95 * report["questions_with_evidence"]

    instructions = read_instruction_table(fhir_dir / "clinician-instruction-responses.tsv")
    assert {i.patient_id for i in instructions} == set(SUBJECTS)
    record_events = {subject: _events_by_id(fhir_dir / "medalign_ehr_xml" / f"{subject}.xml") for subject in SUBJECTS}
    with_evidence = [i for i in instructions if i.evidence_event_ids]
    assert len(with_evidence) == report["questions_resolved"]
    for instruction in with_evidence:
        missing = [e for e in instruction.evidence_event_ids if e not in record_events[instruction.patient_id]]
        assert not missing, f"{instruction.instruction_id}: evidence not in the record: {missing}"
        groups, legacy = instruction.metadata["evidence_groups"], instruction.metadata["evidence_groups_legacy"]
        assert {e for group in groups for e in group} == set(instruction.evidence_event_ids)
        assert len(groups) == len(legacy)  # the legacy rule changes what covers an id, not which ids count
        for group, old in zip(groups, legacy):
            assert set(old) <= set(group)
            if any(e.startswith("adm-") for e in group):  # Encounter: admission or discharge, legacy admission only
                hadm = next(e for e in group if e.startswith("adm-")).removeprefix("adm-")
                assert sorted(group) == [f"adm-{hadm}", f"dis-{hadm}"] and old == [f"adm-{hadm}"]
    encounter_groups = [g for i in with_evidence for g in i.metadata["evidence_groups"] if len(g) == 2
                        and g[0].startswith(("adm-", "icu-"))]
    assert encounter_groups
    gender = next(i for i in instructions if "gender" in i.metadata["template"])
    assert gender.metadata["evidence_groups"] == [[f"patient-{gender.patient_id}"]]

    anchored = [i for i in instructions if i.time_anchor is not None]
    assert anchored and all(i.time_anchor.year > 2100 for i in anchored)
    sample = instructions[0]
    assert sample.reference_answers and sample.metadata["task_type"] == "fhiragentbench"
    assert isinstance(sample.metadata["true_answer"], list)
    assert "template" in sample.metadata and "unresolved_fhir_ids" in sample.metadata
    # A care-unit question: the Location id resolves to the patient's transfer into that unit.
    careunit = [i for i in instructions if i.category == "careunit"]
    for instruction in careunit:
        assert all(e.startswith("xfer-") for e in instruction.evidence_event_ids)
    assert careunit


def test_converted_questions_open_in_medhelms_reader(shared_data: Path, fhir_dir: Path) -> None:
    """The converter writes the release's layout: MedHELM's reader finds every question that has an answer."""
    pytest.importorskip("pandas")
    from tests.medhelm_reader import read_like_medhelm

    instructions = read_instruction_table(fhir_dir / "clinician-instruction-responses.tsv")
    answered = [i for i in instructions if i.reference_answers]
    instances = read_like_medhelm(fhir_dir)
    assert answered and [x.instruction_id for x in instances] == [i.instruction_id for i in answered]
    assert {x.patient_id for x in instances} == {int(s) for s in SUBJECTS}


def test_known_ids_resolve_in_converted_records(shared_data: Path, tmp_path: Path) -> None:
    """Each KNOWN_IDS row's event exists under that id in the converted record of its patient."""
    from medalign_rag.datasets.fhir_agentbench import build_fhir_id_index
    from medalign_rag.datasets.mimic_iv_demo import load_mimic_events

    src, meds, _ = _paths(shared_data)
    wanted = {"Condition": "10015272", "ObservationMicroSusc": "10016150", "ObservationLabevents": "10006053",
              "Patient": "10029291", "Encounter": "10020944", "EncounterICU": "10016810",
              "MedicationPrescriptions": "10005348"}
    data = load_mimic_events(src, meds, subject_ids=set(wanted.values()))
    index = build_fhir_id_index(data)
    closing = {"Encounter": "dis-29974575", "EncounterICU": "icu-out-35436337"}
    for namespace, _key, fhir_id, event_id in KNOWN_IDS:
        if namespace not in wanted:
            continue
        assert index.resolve(fhir_id, "10000032") == []  # another patient's id is no evidence here
        resolved = index.resolve(fhir_id, wanted[namespace])
        if namespace in closing:  # Encounter rule: the opening or the closing event; legacy: the opening one
            assert sorted(resolved) == sorted([event_id, closing[namespace]])
            assert index.resolve(fhir_id, wanted[namespace], legacy=True) == [event_id]
        elif namespace == "MedicationPrescriptions":  # every prescription of the drug, up to the time anchor
            assert sorted(resolved) == sorted([event_id, "rx-73459585"])
            assert index.resolve(fhir_id, wanted[namespace], datetime(2129, 1, 1)) == [event_id]
        else:
            assert resolved == [event_id]


# ------------------------------------------------------------------------------------------------ bad input


def _copy_demo(src: Path, dest: Path, *, without: str | None = None) -> Path:
    """A demo folder of symlinks (cheap), optionally without one table."""
    for table in REQUIRED_TABLES:
        target = dest / f"{table}.csv.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        if table != without:
            target.symlink_to(src / f"{table}.csv.gz")
    return dest


def test_missing_table_names_the_file(shared_data: Path, tmp_path: Path) -> None:
    src, meds, _ = _paths(shared_data)
    broken = _copy_demo(src, tmp_path / "demo", without="hosp/labevents")
    with pytest.raises(MedalignError) as caught:
        convert_mimic_iv_demo(broken, meds, tmp_path / "out", subject_ids=["10016150"])
    assert caught.value.path is not None and caught.value.path.endswith("labevents.csv.gz")
    assert "labevents.csv.gz" in str(caught.value)


def test_missing_column_names_file_and_column(shared_data: Path, tmp_path: Path) -> None:
    src, meds, _ = _paths(shared_data)
    broken = _copy_demo(src, tmp_path / "demo", without="hosp/omr")
    omr = _read_demo(src, "hosp/omr").drop(columns=["result_value"])
    with gzip.open(broken / "hosp" / "omr.csv.gz", "wt") as handle:
        omr.to_csv(handle, index=False)
    with pytest.raises(MedalignError, match="result_value") as caught:
        convert_mimic_iv_demo(broken, meds, tmp_path / "out", subject_ids=["10016150"])
    assert caught.value.path.endswith("omr.csv.gz")


def test_missing_meds_file_and_unknown_subject(shared_data: Path, tmp_path: Path) -> None:
    src, _, _ = _paths(shared_data)
    with pytest.raises(MedalignError, match="not found") as caught:
        convert_mimic_iv_demo(src, tmp_path / "nope.parquet", tmp_path / "out", subject_ids=["10016150"])
    assert caught.value.path.endswith("nope.parquet")
    with pytest.raises(MedalignError, match="99999999"):
        convert_mimic_iv_demo(src, None, tmp_path / "out", subject_ids=["99999999"])


def test_bad_task_tables(shared_data: Path, tmp_path: Path) -> None:
    src, meds, tasks_csv = _paths(shared_data)
    tasks = pd.read_csv(tasks_csv, dtype=str, keep_default_na=False)

    no_gold = tmp_path / "no_gold.csv"
    tasks.drop(columns=["true_fhir_ids"]).head(3).to_csv(no_gold, index=False)
    with pytest.raises(MedalignError, match="true_fhir_ids") as caught:
        convert_fhir_agentbench(no_gold, tmp_path / "out", src, meds)
    assert caught.value.path.endswith("no_gold.csv") and caught.value.line == 1

    stranger = tmp_path / "stranger.csv"
    rows = tasks.head(3).copy()
    rows.loc[rows.index[1], "patient_fhir_id"] = "00000000-0000-5000-8000-000000000000"
    rows.to_csv(stranger, index=False)
    with pytest.raises(MedalignError, match="patient_fhir_id") as caught:
        convert_fhir_agentbench(stranger, tmp_path / "out", src, meds)
    assert caught.value.line == 3  # header is line 1, the second question line 3

    garbled = tmp_path / "garbled.csv"
    rows = tasks.head(2).copy()
    rows.loc[rows.index[0], "true_fhir_ids"] = "{'Observation': ['a', "
    rows.to_csv(garbled, index=False)
    with pytest.raises(MedalignError, match="true_fhir_ids") as caught:
        read_tasks(garbled)
    assert caught.value.line == 2
    assert not (tmp_path / "out").exists()  # nothing written on bad input


def test_missing_demo_folder(tmp_path: Path) -> None:
    with pytest.raises(MedalignError, match="not found"):
        convert_mimic_iv_demo(tmp_path / "absent", None, tmp_path / "out")
