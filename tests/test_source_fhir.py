"""FHIR R4 record source and exporter: real Synthea output, our own exports (round trips), malformed input."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.records.export_fhir import export_fhir, record_to_bundle
from medalign_rag.records.model import EventKind, PatientRecord
from medalign_rag.records.sources import open_source
from medalign_rag.records.sources.fhir import FhirSource
from tests.factories import make_record

R4B = pytest.importorskip("fhir.resources.R4B.bundle")

ELEANORE = "Eleanore671_Mueller846_cdcc524d-49e3-490a-87cd-6dd7ef97da53.json"


def _validate(path: Path) -> None:
    """fhir.resources' R4B models (its default models are R5, which Synthea's R4 does not fit)."""
    R4B.Bundle.model_validate_json(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def synthea() -> Path:
    from tests.conftest import SHARED_DATA

    folder = SHARED_DATA / "synthea_fhir"
    if not folder.is_dir():
        pytest.skip(f"public data not found at {folder}")
    return folder


@pytest.mark.shared_data
def test_every_synthea_patient_reads(synthea: Path) -> None:
    source = open_source(synthea)
    assert isinstance(source, FhirSource)
    ids = source.patient_ids()
    assert len(ids) == 47  # 46 patients of the 2025 run + Eleanore671 (2020)
    totals = {"events": 0, "notes": 0}
    for patient_id in ids:
        record = source.load_record(patient_id)
        assert record.n_events > 0 and record.demographics.birthdate is not None
        totals["events"] += record.n_events
        totals["notes"] += record.n_notes
        for _, event in record.iter_events():
            if event.kind is EventKind.note:
                assert event.text and "\ufffd" not in event.text  # base64 decoded as UTF-8
    assert totals["notes"] > 1000
    # Synthea's claims and billing are not clinical events: skipped, and counted per type.
    counts = source.warnings.counts
    assert counts["unsupported FHIR resource type Claim skipped"] == 2620
    assert counts["unsupported FHIR resource type ExplanationOfBenefit skipped"] == 2500
    eleanore = source.load_record("cdcc524d-49e3-490a-87cd-6dd7ef97da53")
    drugs = [e for _, e in eleanore.iter_events() if e.source_type == "MedicationRequest"]
    assert len(drugs) == 120 and eleanore.n_notes == 0
    # Resource ids are the event ids; the Encounter is both the encounter and its visit event.
    bundle = json.loads((synthea / ELEANORE).read_text())
    observation = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    found = {event.event_id: (encounter, event) for encounter, event in eleanore.iter_events()}
    encounter, event = found[observation["id"]]
    assert encounter.encounter_id == observation["encounter"]["reference"].removeprefix("urn:uuid:")
    assert event.timestamp == datetime.fromisoformat(observation["effectiveDateTime"][:19])  # wall clock kept
    assert found[encounter.encounter_id][1].kind is EventKind.visit


@pytest.mark.shared_data
def test_a_few_synthea_files_validate_as_r4(synthea: Path) -> None:
    smallest = sorted((p for p in synthea.glob("*.json") if "Information" not in p.name), key=lambda p: p.stat().st_size)
    for path in [*smallest[:2], synthea / ELEANORE]:
        _validate(path)


def _strip_displays(value):
    if isinstance(value, dict):
        return {k: _strip_displays(v) for k, v in value.items() if not (k == "display" and "reference" in value)}
    if isinstance(value, list):
        return [_strip_displays(v) for v in value]
    return value


@pytest.mark.shared_data
def test_conditional_references_resolve_through_the_shared_bundles(synthea: Path, tmp_path: Path) -> None:
    """Practitioner?identifier=... and Location?identifier=... resolve into hospitalInformation /
    practitionerInformation; without those files the reference text itself is kept as the name."""
    patient_file = min((p for p in synthea.glob("*.json") if "Information" not in p.name and p.name != ELEANORE),
                       key=lambda p: p.stat().st_size)
    with_shared = tmp_path / "with"
    with_shared.mkdir()
    bundle = _strip_displays(json.loads(patient_file.read_text()))
    (with_shared / patient_file.name).write_text(json.dumps(bundle))
    for shared in synthea.glob("*Information*.json"):
        shutil.copy(shared, with_shared / shared.name)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / patient_file.name).write_text(json.dumps(bundle))

    def visit_texts(folder: Path) -> list[str]:
        source = FhirSource(folder)
        (patient_id,) = source.patient_ids()
        return [e.text or "" for _, e in source.load_record(patient_id).iter_events() if e.kind is EventKind.visit]

    resolved = visit_texts(with_shared)
    assert all("by: Dr. " in text and "Practitioner?" not in text for text in resolved)
    unresolved = visit_texts(alone)
    assert all("by: Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|" in text for text in unresolved)


def _synthetic_cohort(tmp_path: Path, n: int = 4) -> Path:
    from medalign_rag.datasets.synthetic import generate_cohort

    generate_cohort(tmp_path / "cohort", n_patients=n, seed=3)
    return tmp_path / "cohort"


def _bundles_to_ndjson(bundle_dir: Path, out: Path) -> None:
    """A bulk-export layout: one NDJSON file per resource type."""
    out.mkdir()
    lines: dict[str, list[str]] = {}
    for path in sorted(bundle_dir.glob("*.json")):
        bundle = json.loads(path.read_text())
        ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}

        def relative(value):  # bulk data references are Type/id, not the bundle's urn:uuid
            if isinstance(value, dict):
                return {k: (ids.get(v, v) if k == "reference" else relative(v)) for k, v in value.items()}
            if isinstance(value, list):
                return [relative(v) for v in value]
            return value

        for entry in bundle["entry"]:
            resource = relative(entry["resource"])
            lines.setdefault(resource["resourceType"], []).append(json.dumps(resource))
    for kind, rows in lines.items():
        (out / f"{kind}.ndjson").write_text("\n".join(rows) + "\n")


def _canonical(record: PatientRecord) -> PatientRecord:
    return record.model_copy(update={"encounters": [
        e.model_copy(update={"events": sorted(e.events, key=lambda ev: (ev.timestamp, ev.event_id))})
        for e in record.encounters]})


def test_export_then_read_is_lossless_on_the_synthetic_cohort(tmp_path: Path) -> None:
    cohort = open_source(_synthetic_cohort(tmp_path))
    summary = export_fhir(cohort, tmp_path / "fhir")
    assert summary.patients == 4
    for path in summary.files:
        _validate(path)
    back = open_source(tmp_path / "fhir")
    assert isinstance(back, FhirSource) and back.patient_ids() == cohort.patient_ids()
    for patient_id in cohort.patient_ids():
        assert back.load_record(patient_id) == cohort.load_record(patient_id)
    assert not back.warnings
    # The same resources as an NDJSON bulk export read the same (a bulk export, one file per resource type, has
    # no order across types: events at the same time may come in another order).
    _bundles_to_ndjson(tmp_path / "fhir", tmp_path / "ndjson")
    bulk = open_source(tmp_path / "ndjson")
    assert bulk.patient_ids() == cohort.patient_ids()
    for patient_id in cohort.patient_ids():
        assert _canonical(bulk.load_record(patient_id)) == _canonical(cohort.load_record(patient_id))
    # Fingerprints follow the patient's own data.
    first, second = cohort.patient_ids()[:2]
    before = {pid: bulk.fingerprint(pid) for pid in (first, second)}
    observations = tmp_path / "ndjson" / "Observation.ndjson"
    rows = observations.read_text().splitlines()
    changed = [row.replace('"value": ', '"value": 1') if f'"Patient/{first}"' in row and '"value": ' in row
               else row for row in rows]
    observations.write_text("\n".join(changed) + "\n")
    after = FhirSource(tmp_path / "ndjson")
    assert after.fingerprint(first) != before[first] and after.fingerprint(second) == before[second]


def test_ids_fhir_cannot_hold_survive_the_round_trip(tmp_path: Path) -> None:
    record = make_record(seed=5, n_encounters=3, patient_id="odd_id")  # '_' is not allowed in FHIR ids
    record = record.model_copy(update={"encounters": [
        e.model_copy(update={"encounter_id": f"enc_{i}"}) for i, e in enumerate(record.encounters)]})
    (tmp_path / "out").mkdir()
    bundle = record_to_bundle(record)
    (tmp_path / "out" / "odd_id.json").write_text(json.dumps(bundle))
    _validate(tmp_path / "out" / "odd_id.json")
    assert all("_" not in entry["resource"]["id"] for entry in bundle["entry"])
    assert FhirSource(tmp_path / "out").load_record("odd_id") == PatientRecord.model_validate(record.model_dump())


@pytest.mark.shared_data
def test_mimic_demo_records_export_and_read_back(tmp_path: Path) -> None:
    from tests.source_data import converted_mimic_records

    converted = converted_mimic_records()
    records = [converted["10000032"], converted["10002428"]]
    out = tmp_path / "mimic_fhir"
    out.mkdir()
    for record in records:
        path = out / f"{record.patient_id}.json"
        path.write_text(json.dumps(record_to_bundle(record)))
        _validate(path)
    back = FhirSource(out)
    for record in records:
        assert back.load_record(record.patient_id) == record


# ------------------------------------------------------------------------------------------- bad input


def _bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}


PATIENT = {"resourceType": "Patient", "id": "p-1", "birthDate": "1970", "gender": "female"}
ENCOUNTER = {"resourceType": "Encounter", "id": "enc-1", "status": "finished", "class": {"code": "AMB"},
             "subject": {"reference": "urn:uuid:p-1"}, "period": {"start": "2020-05-01T09:00:00-05:00"}}


def _observation(obs_id: str, **extra) -> dict:
    return {"resourceType": "Observation", "id": obs_id, "status": "final", "code": {"text": "Glucose"},
            "subject": {"reference": "urn:uuid:p-1"}, "effectiveDateTime": "2020-05-01T09:30:00-05:00",
            "valueQuantity": {"value": 5.4, "unit": "mmol/L"}, **extra}


def test_malformed_and_partial_bundles(tmp_path: Path) -> None:
    note = base64.b64encode("Seen for follow-up. Glucose ok.".encode()).decode()
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "p.json").write_text(json.dumps(_bundle(
        PATIENT, ENCOUNTER,
        _observation("obs-1", encounter={"reference": "urn:uuid:enc-1"}),
        _observation("obs-1", encounter={"reference": "urn:uuid:enc-1"}),  # duplicate id
        _observation("obs-2", encounter={"reference": "Encounter/missing"}),  # missing encounter
        _observation("obs-3", effectiveDateTime="yesterday"),  # unparseable time
        {"resourceType": "Claim", "id": "c-1", "patient": {"reference": "urn:uuid:p-1"}},
        {"resourceType": "DocumentReference", "id": "doc-1", "status": "current",
         "subject": {"reference": "urn:uuid:p-1"}, "date": "2020-05-01T10:00:00-05:00",
         "context": {"encounter": [{"reference": "urn:uuid:enc-1"}]},
         "content": [{"attachment": {"contentType": "text/plain", "data": note}}]},
        {"resourceType": "DocumentReference", "id": "doc-2", "status": "current",
         "subject": {"reference": "urn:uuid:p-1"}, "date": "2020-05-01T10:00:00-05:00",
         "content": [{"attachment": {"contentType": "text/plain", "url": "https://example.org/doc"}}]},
    )))
    source = open_source(folder)
    record = source.load_record("p-1")
    events = {e.event_id: (enc, e) for enc, e in record.iter_events()}
    assert set(events) == {"enc-1", "obs-1", "obs-2", "doc-1"}
    assert events["obs-1"][1].timestamp == datetime(2020, 5, 1, 9, 30) and events["obs-1"][1].value == "5.4"
    assert events["obs-2"][0].encounter_id == "p-1-day-20200501"
    assert events["doc-1"][1].text == "Seen for follow-up. Glucose ok." and events["doc-1"][0].encounter_id == "enc-1"
    counts = source.warnings.counts
    assert counts == {
        "duplicate resource id skipped": 1,
        "reference to a missing Encounter (event placed by its day)": 1,
        "Observation without a (parseable) time skipped": 1,
        "unsupported FHIR resource type Claim skipped": 1,
        "DocumentReference without inline text skipped": 1,
    }
    assert any("p.json: Observation/obs-3" in line for line in source.warnings.lines())


def test_broken_files_are_one_line_errors(tmp_path: Path) -> None:
    bad_json = tmp_path / "a"
    bad_json.mkdir()
    (bad_json / "x.json").write_text('{"resourceType": "Bundle", "entry": [\n  {"resource": }\n]}')
    with pytest.raises(MedalignError, match=r"x\.json:2: malformed JSON"):
        FhirSource(bad_json).patient_ids()
    bad_line = tmp_path / "b"
    bad_line.mkdir()
    (bad_line / "Patient.ndjson").write_text(json.dumps(PATIENT) + "\n{not json\n")
    with pytest.raises(MedalignError, match=r"Patient\.ndjson:2: malformed JSON line"):
        FhirSource(bad_line).patient_ids()
    no_resource = tmp_path / "c"
    no_resource.mkdir()
    (no_resource / "y.json").write_text(json.dumps({"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:1"}]}))
    with pytest.raises(MedalignError, match=r"y\.json: Bundle entry 0 has no resource"):
        FhirSource(no_resource).patient_ids()
    empty = tmp_path / "d"
    empty.mkdir()
    (empty / "z.json").write_text(json.dumps(_bundle(PATIENT)))
    with pytest.raises(MedalignError, match="no encounters or dated clinical resources"):
        FhirSource(empty).load_record("p-1")
    with pytest.raises(MedalignError, match="no FHIR Patient 'p-2'"):
        FhirSource(empty).load_record("p-2")
