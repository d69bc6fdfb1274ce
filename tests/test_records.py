"""Reading EHR XML in both MedAlign layouts, round trips through our writer, and the data-folder loader."""

from __future__ import annotations

import string
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medalign_rag.errors import MedalignError
from medalign_rag.records.dataset import open_data_folder
from medalign_rag.records.instructions import write_instruction_table
from medalign_rag.records.model import (
    OMOP_TABLE_BY_KIND,
    Demographics,
    Encounter,
    Event,
    EventKind,
    Instruction,
    PatientRecord,
    kind_from_source_type,
)
from medalign_rag.records.readers import parse_code_line, parse_timestamp, read_record
from medalign_rag.records.serialize import render_record, write_release_xml
from medalign_rag.records.sources.medalign_xml import UNSAFE_NAME_WARNING

FIXTURES = Path(__file__).parent / "fixtures" / "records"


def sample_path(shared_data: Path) -> Path:
    return shared_data / "medalign_sample" / "ehrs" / "sample-ehr-clean.xml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- paper layout


def test_sample_reads_as_three_visits(shared_data: Path) -> None:
    record = read_record(sample_path(shared_data))
    assert record.patient_id == "sample-ehr-clean"
    assert [enc.type for enc in record.encounters] == ["Emergency Room Visit", "Visit", "Neurology Clinic Visit"]
    assert [enc.start for enc in record.encounters] == [
        datetime(2018, 10, 8, 20, 0),
        datetime(2018, 10, 20, 11, 0),
        datetime(2022, 5, 15, 14, 0),
    ]
    # The end of a visit is its last event; "9:00 PM" has no leading zero in the file.
    assert record.encounters[0].end == datetime(2018, 10, 8, 21, 0)
    assert record.n_events == 57
    assert record.n_notes == 5
    assert record.demographics == Demographics(
        birthdate=datetime(1966, 7, 19), gender="FEMALE", race="White", ethnicity="Hispanic or Latino"
    )


def test_sample_code_lines_become_events(shared_data: Path) -> None:
    record = read_record(sample_path(shared_data), patient_id="p1")
    events = {ev.event_id: ev for _, ev in record.iter_events()}
    mean_bp = events["p1-enc0000-e00005"]
    assert (mean_bp.kind, mean_bp.code, mean_bp.name, mean_bp.value, mean_bp.unit) == (
        EventKind.measurement, "LOINC/8478-0", "Mean blood pressure", "122", "mm Hg"
    )
    saturation = events["p1-enc0000-e00014"]
    assert (saturation.kind, saturation.name, saturation.value, saturation.unit) == (
        EventKind.observation, "Oxygen saturation", "96", "%"
    )
    visit_detail = events["p1-enc0000-e00001"]
    assert visit_detail.kind == EventKind.visit and visit_detail.source_type == "visit_detail"
    # A trailing number in a drug's name is part of the name, not a result.
    drug = events["p1-enc0001-e00017"]
    assert (drug.kind, drug.name, drug.value) == (EventKind.drug, "Labetalol 5mg IV x 1", None)
    first_note = events["p1-enc0000-e00015"]
    assert first_note.kind == EventKind.note and first_note.name == "emergency department note"
    assert first_note.text.startswith("Emergency Department Provider Note") and first_note.text.endswith("AM.")
    assert events["p1-enc0000-e00019"].name is None  # type="NULL"
    multi_line = record.encounters[2].events[-2]
    assert multi_line.text.splitlines()[1].startswith("MRI Brain 4/28/22")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[LOINC/8277-6] Body surface area 0 sq meters", ("LOINC/8277-6", "Body surface area", "0", "sq meters")),
        ("[LOINC/8310-5] Body temperature 98.2 ", ("LOINC/8310-5", "Body temperature", "98.2", None)),
        ("[LOINC/38214-3] Pain severity [Score] Visual analog score 1",
         ("LOINC/38214-3", "Pain severity [Score] Visual analog score", "1", None)),
        ("[LOINC/8601-7] EKG impression", ("LOINC/8601-7", "EKG impression", None, None)),
        ("[X/1] Creatinine -0.5 mg/dL", ("X/1", "Creatinine", "-0.5", "mg/dL")),
        ("no code here 5", (None, "no code here", "5", None)),
        # Three words after the number are not a unit: keep everything as the name.
        ("[X/2] Dose 5 mg per day", ("X/2", "Dose 5 mg per day", None, None)),
    ],
)
def test_parse_code_line(line: str, expected: tuple) -> None:
    assert parse_code_line(line) == expected


def test_parse_timestamp_formats() -> None:
    assert parse_timestamp("10/08/2018 08:05 PM") == datetime(2018, 10, 8, 20, 5)
    assert parse_timestamp("10/08/2018 20:00") == datetime(2018, 10, 8, 20, 0)
    assert parse_timestamp("7/19/1966") == datetime(1966, 7, 19)
    assert parse_timestamp("2018-10-08 20:05:00") == datetime(2018, 10, 8, 20, 5)
    # an offset is dropped and the wall-clock reading kept, as for every other timestamp input
    assert parse_timestamp("2018-10-08T21:05:00+01:00") == datetime(2018, 10, 8, 21, 5)
    assert parse_timestamp("yesterday") is None


def test_sample_round_trip_is_exact(shared_data: Path, tmp_path: Path) -> None:
    first = read_record(sample_path(shared_data))
    write_release_xml(first, tmp_path / "a.xml")
    second = read_record(tmp_path / "a.xml")
    assert second == first
    write_release_xml(second, tmp_path / "b.xml")
    assert (tmp_path / "a.xml").read_bytes() == (tmp_path / "b.xml").read_bytes()


# ----------------------------------------------------------------------------------------- release layout


def test_release_layout_without_our_extensions(tmp_path: Path) -> None:
    path = FIXTURES / "release-plain.xml"
    record = read_record(path)
    assert record.patient_id == "12345"
    assert record.demographics == Demographics(
        birthdate=datetime(1950, 3, 1), gender="F", race=None, ethnicity="Not Hispanic or Latino"
    )
    first, second = record.encounters
    assert first.encounter_id == "12345-enc0000"
    assert first.type == "Inpatient Visit"  # the name of the visit event inside
    assert second.type == "encounter"  # no visit event: the generic type
    assert first.end == datetime(2019, 1, 3, 10, 0)
    assert [ev.event_id for ev in first.events] == [f"12345-enc0000-e{n:05d}" for n in range(4)]
    visit, lab, note, condition = first.events
    assert visit.kind == EventKind.visit and visit.source_type is None
    assert (lab.kind, lab.code, lab.name, lab.value, lab.text) == (
        EventKind.measurement, "LOINC/2160-0", "Creatinine", "1.2", None
    )
    assert note.kind == EventKind.note and note.value is None
    assert note.text == "Pt stable.\nContinue <meds> & \"fluids\"."
    assert condition.kind == EventKind.condition and condition.source_type == "condition"
    assert second.events[0].kind == EventKind.other and second.events[0].source_type == "device_exposure"
    assert second.start == datetime(2020, 5, 5, 8, 0)


def test_release_layout_with_our_extensions(tmp_path: Path) -> None:
    text = """<eventstream person_id="p9">
  <encounter id="E1" type="Clinic" start_timestamp="2021-01-01 09:00:00">
    <unknown_block foo="bar"><x/></unknown_block>
    <events>
      <entry timestamp="2021-01-01 09:30:00">
        <event id="lab-7" type="measurement" name="Glucose" unit="mg/dL" value="104" extra="ignored">fasting</event>
        <event type="measurement" name="HbA1c" unit="%">6.1</event>
      </entry>
    </events>
  </encounter>
</eventstream>"""
    record = read_record(write(tmp_path, "anything.xml", text))
    assert record.patient_id == "p9"
    glucose, hba1c = record.encounters[0].events
    assert (glucose.event_id, glucose.value, glucose.unit, glucose.text) == ("lab-7", "104", "mg/dL", "fasting")
    assert (hba1c.event_id, hba1c.value, hba1c.unit, hba1c.text) == ("E1-e00001", "6.1", "%", None)
    assert record.encounters[0].type == "Clinic" and record.encounters[0].end is None
    assert read_record(tmp_path / "anything.xml", patient_id="other").patient_id == "other"


def test_empty_values_read_stably(tmp_path: Path) -> None:
    text = """<eventstream person_id="p2">
  <encounter start_timestamp="2021-01-01 09:00:00" type="">
    <person><gender>  </gender></person>
    <events>
      <entry timestamp="2021-01-01 09:30:00">
        <event type="measurement" name="" code="" value="">   </event>
        <event type="note"></event>
        <event type="note" value="5"></event>
        <event type="measurement" value="7"></event>
      </entry>
    </events>
  </encounter>
</eventstream>"""
    first = read_record(write(tmp_path, "p2.xml", text))
    whitespace, empty_note, note_with_value, value_only = first.encounters[0].events
    assert (whitespace.name, whitespace.code, whitespace.value) == (None, None, "   ")
    assert (empty_note.text, empty_note.value) == (None, None)
    assert (note_with_value.text, note_with_value.value) == (None, "5")
    assert (value_only.text, value_only.value) == (None, "7")
    assert first.demographics.gender is None
    write_release_xml(first, tmp_path / "again.xml")
    assert read_record(tmp_path / "again.xml") == first


# ------------------------------------------------------------------------------------ round-trip property

# XML 1.0 cannot carry most control characters at all, even escaped; everything else must survive.
_XML_CHARS = st.characters(
    codec="utf-8",
    exclude_categories=("Cs",),
    exclude_characters="".join(chr(c) for c in range(32) if c not in (9, 10, 13)) + "\ufffe\uffff",
)
_AWKWARD = st.sampled_from(["<", ">", "&", "&amp;", '"', "'", "\n", "\r\n", "\t", " ", "]]>", "é", "中", "🙂", "\u00a0"])
_text = st.lists(st.one_of(_AWKWARD, st.text(_XML_CHARS, max_size=6)), max_size=6).map("".join)
_optional_text = st.one_of(st.none(), _text.filter(bool))
# Mostly whole seconds, as in the data, but fractions must survive too.
_stamps = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda value: value.replace(microsecond=0) if value.microsecond % 2 else value
)
_RAW_TYPES = [*OMOP_TABLE_BY_KIND.values(), "condition", "drug", "visit_detail", "Measurement", "device_exposure"]
_id_chars = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=8)


@st.composite
def _events(draw: st.DrawFn, prefix: str, canonical: bool) -> list[Event]:
    events = []
    for n in range(draw(st.integers(0, 5))):
        raw_type = draw(st.sampled_from(_RAW_TYPES))
        kind = kind_from_source_type(raw_type)
        value = draw(_optional_text if canonical else st.one_of(st.none(), _text))
        text = draw(_optional_text if canonical else st.one_of(st.none(), _text))
        if canonical and kind is not EventKind.note and value is None:
            text = None  # a non-note's body is its value unless a value attribute says otherwise
        events.append(
            Event(
                event_id=f"{prefix}.{n}",
                timestamp=draw(_stamps),
                kind=kind,
                source_type=None if raw_type == OMOP_TABLE_BY_KIND[kind] else raw_type,
                code=draw(_optional_text),
                name=draw(_optional_text),
                value=value,
                unit=draw(_optional_text),
                text=text,
            )
        )
    return events


_clean_text = _text.map(str.strip).filter(bool)


@st.composite
def records(draw: st.DrawFn, canonical: bool = True) -> PatientRecord:
    encounters = []
    for n in range(draw(st.integers(1, 3))):
        encounter_id = f"{draw(_id_chars)}-{n}"
        encounters.append(
            Encounter(
                encounter_id=encounter_id,
                type=draw(_text.filter(bool)) if canonical else draw(_text),
                start=draw(_stamps),
                end=draw(st.one_of(st.none(), _stamps)),
                events=draw(_events(encounter_id, canonical)),
            )
        )
    demographics = Demographics(
        birthdate=draw(st.one_of(st.none(), _stamps)),
        gender=draw(st.one_of(st.none(), _clean_text)),
        race=draw(st.one_of(st.none(), _clean_text)),
        ethnicity=draw(st.one_of(st.none(), _clean_text)),
    )
    return PatientRecord(patient_id=draw(_id_chars.filter(lambda s: s[0].isalnum() and ".." not in s)),
                         demographics=demographics, encounters=encounters)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=records(canonical=True))
def test_canonical_records_survive_write_and_read(tmp_path: Path, record: PatientRecord) -> None:
    write_release_xml(record, tmp_path / "r.xml")
    assert read_record(tmp_path / "r.xml") == record


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=records(canonical=False))
def test_any_record_is_stable_after_one_read(tmp_path: Path, record: PatientRecord) -> None:
    write_release_xml(record, tmp_path / "r.xml")
    first = read_record(tmp_path / "r.xml")
    write_release_xml(first, tmp_path / "r.xml")
    assert read_record(tmp_path / "r.xml") == first


def test_ids_are_not_required_and_are_deterministic(tmp_path: Path) -> None:
    record = read_record(FIXTURES / "release-plain.xml")
    (tmp_path / "no-ids.xml").write_text(render_record(record, include_ids=False), encoding="utf-8")
    again = read_record(tmp_path / "no-ids.xml")
    assert again == record


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("<eventstream person_id='p'>\n<encounter start_timestamp='2020-01-01 00:00:00'>\n</eventstream>", 3,
         "malformed XML"),
        ("<patients>\n</patients>", 1, "unknown EHR layout"),
        ("<eventstream person_id='p'>\n  <encounter start_timestamp='2020-13-45 00:00:00'/>\n</eventstream>", 2,
         "bad 'start_timestamp'"),
        ("<eventstream person_id='p'>\n<encounter start_timestamp='2020-01-01'>\n<events>\n"
         "<entry timestamp='soon'><event type='note'>x</event></entry></events></encounter></eventstream>", 4,
         "<entry> has a bad 'timestamp'"),
        ("<record>\n<visit type='V' start='10/08/2018 20:00'><day>\n<measurement start='13/45/2018 25:00'>"
         "<code>[A/1] x 1</code></measurement></day></visit></record>", 3, "<measurement> has a bad 'start'"),
        ("<eventstream person_id='p'>\n<encounter/>\n</eventstream>", 2, "no 'start_timestamp'"),
    ],
)
def test_bad_xml_names_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, "bad.xml", text)
    with pytest.raises(MedalignError) as caught:
        read_record(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("<eventstream person_id='p'></eventstream>", "no encounters"),
        ("<record><other/></record>", "no encounters"),
        ("<eventstream person_id='../../etc/x'><encounter start_timestamp='2020-01-01'/></eventstream>",
         "not allowed"),
        ("<eventstream person_id='p'><encounter id='a' start_timestamp='2020-01-01'/>"
         "<encounter id='a' start_timestamp='2020-01-02'/></eventstream>", "appears twice"),
    ],
)
def test_bad_records_name_the_file(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, "bad.xml", text)
    with pytest.raises(MedalignError) as caught:
        read_record(path)
    assert str(caught.value).startswith(str(path)) and words in str(caught.value)


def test_unsafe_patient_id_argument_is_rejected(shared_data: Path) -> None:
    with pytest.raises(MedalignError, match="not allowed"):
        read_record(sample_path(shared_data), patient_id="../x")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MedalignError, match="not found") as caught:
        read_record(tmp_path / "nope.xml")
    assert str(tmp_path / "nope.xml") in str(caught.value)


# ---------------------------------------------------------------------------------------------- data folder


def test_shared_sample_folder(shared_data: Path) -> None:
    folder = open_data_folder(shared_data / "medalign_sample")
    assert folder.patient_ids() == ["sample-ehr-clean"]
    assert len(folder.load_record("sample-ehr-clean").encounters) == 3
    assert folder.instructions() == [] and folder.model_responses() == []


def test_release_folder_with_tables(tmp_path: Path) -> None:
    ehrs = tmp_path / "data" / "ehrs"
    ehrs.mkdir(parents=True)
    for patient_id in ("b", "a"):
        record = read_record(FIXTURES / "release-plain.xml", patient_id=patient_id)
        write_release_xml(record, ehrs / f"{patient_id}.xml")
    (ehrs / ".a.xml.123.tmp").write_text("half-written")
    write_instruction_table(
        [Instruction(instruction_id="1", patient_id="a", question="Q?", reference_answers=["A"])],
        tmp_path / "data" / "clinician-instruction-responses.tsv",
    )
    (tmp_path / "data" / "clinician-reviewed-model-responses.tsv").write_text(
        "instruction_id\tperson_id\tmodel_name\tmodel_response\tmodel_rank\n1\ta\tgpt-4\tyes\t1\n"
    )
    folder = open_data_folder(tmp_path / "data")
    assert folder.patient_ids() == ["a", "b"]
    assert folder.record_path("a") == ehrs / "a.xml"
    assert folder.load_record("b").patient_id == "b"
    assert [i.reference_answers for i in folder.instructions()] == [["A"]]
    assert [(r.model_name, r.rank) for r in folder.model_responses()] == [("gpt-4", 1.0)]


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "..", "", ".hidden"])
def test_folder_rejects_unsafe_ids(tmp_path: Path, bad_id: str) -> None:
    write_release_xml(read_record(FIXTURES / "release-plain.xml"), tmp_path / "ehrs" / "12345.xml")
    folder = open_data_folder(tmp_path)
    with pytest.raises(MedalignError, match="not allowed"):
        folder.record_path(bad_id)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(MedalignError, match="data folder not found"):
        open_data_folder(tmp_path / "missing")
    with pytest.raises(MedalignError, match="no ehrs/ folder"):
        open_data_folder(tmp_path)
    (tmp_path / "ehrs").mkdir()
    folder = open_data_folder(tmp_path)
    with pytest.raises(MedalignError, match="no EHR for patient 'p1'") as caught:
        folder.record_path("p1")
    assert str(tmp_path / "ehrs" / "p1.xml") in str(caught.value)
    (tmp_path / "ehrs" / "bad name.xml").write_text("<record/>")
    # issue 9.12: an unsafe file name is skipped and named in the folder's warnings, not an error for the folder
    assert folder.patient_ids() == [] and folder.patient_ids() == []
    assert folder.warnings.counts == {UNSAFE_NAME_WARNING: 1}
    assert "bad name.xml" in folder.warnings.lines()[0]
    with pytest.raises(MedalignError, match="not allowed"):
        folder.record_path("bad name")


def test_folder_of_loose_files_and_single_file(tmp_path: Path) -> None:
    write_release_xml(read_record(FIXTURES / "release-plain.xml"), tmp_path / "12345.xml")
    assert open_data_folder(tmp_path).patient_ids() == ["12345"]
    single = open_data_folder(tmp_path / "12345.xml")
    assert single.patient_ids() == ["12345"]
    assert single.load_record("12345").n_events == 5
    with pytest.raises(MedalignError, match="no EHR"):
        single.record_path("other")
