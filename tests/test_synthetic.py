"""The synthetic cohort: deterministic, long enough to need cutting, and with gold answers that match the record."""

from __future__ import annotations

import csv
import hashlib
import random
import re
from datetime import datetime
from pathlib import Path

import pytest

from medalign_rag.datasets.synthetic import (
    INSTRUCTIONS_FILENAME,
    LENGTH_TIERS,
    MODEL_RESPONSES_FILENAME,
    RELEASE_EHRS_DIRNAME,
    CohortSummary,
    evidence_depths,
    generate_cohort,
    generate_patient,
    synthetic_patient_id,
)
from medalign_rag.errors import MedalignError
from medalign_rag.records.instructions import read_instruction_table
from medalign_rag.records.model import Event, EventKind, Instruction, PatientRecord
from medalign_rag.records.readers import read_record
from medalign_rag.records.serialize import event_line_numbers, render_record
from medalign_rag.tokenization import default_counter

A1C = "LOINC/4548-4"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, CohortSummary, dict[str, PatientRecord], list[Instruction]]:
    """The default cohort (20 patients, seed 7), read back from disk with the project's own readers."""
    out = tmp_path_factory.mktemp("synthetic-cohort")
    summary = generate_cohort(out, n_patients=20, seed=7)
    records = {path.stem: read_record(path) for path in sorted((out / RELEASE_EHRS_DIRNAME).glob("*.xml"))}
    instructions = read_instruction_table(out / INSTRUCTIONS_FILENAME)
    return out, summary, records, instructions


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _events(record: PatientRecord) -> list[Event]:
    return [event for _, event in record.iter_events()]


def _day(value: datetime) -> str:
    return value.strftime("%Y-%m-%d")


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    generate_cohort(tmp_path / "a", n_patients=5, seed=3)
    generate_cohort(tmp_path / "b", n_patients=5, seed=3)
    first, second = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert sorted(first) == sorted([INSTRUCTIONS_FILENAME, MODEL_RESPONSES_FILENAME]
                                   + [f"{RELEASE_EHRS_DIRNAME}/990000000000{i}.xml" for i in range(1, 6)])
    assert first == second


def _as_old_ids(text: str) -> str:
    """Numeric synthetic ids written back in the form of the first layout (9900000000001 -> synth-0001)."""
    return re.sub(r"\b99(\d{11})\b", lambda match: f"synth-{int(match.group(1)):04d}", text)


def test_default_cohort_is_unchanged_by_the_copy_forward_option_and_the_numeric_ids(tmp_path: Path) -> None:
    """The records from before `copy_forward` and numeric ids existed (digest of seed 3's records, taken with the
    `ehrs/synth-0001.xml` names), with the option off or omitted: only the ids changed."""
    generate_cohort(tmp_path / "omitted", n_patients=3, seed=3)
    generate_cohort(tmp_path / "off", n_patients=3, seed=3, copy_forward=0.0)
    assert _file_bytes(tmp_path / "omitted") == _file_bytes(tmp_path / "off")
    digest = hashlib.sha256()
    for path in sorted((tmp_path / "off" / RELEASE_EHRS_DIRNAME).glob("*.xml")):
        digest.update(_as_old_ids(path.name).encode())
        digest.update(_as_old_ids(path.read_text(encoding="utf-8")).encode())
    assert digest.hexdigest() == "0d7b7dd672da62ec6176a22d29fec32284d669c0b1f4362ab6a5f54298ea3458"
    # The instruction table too, metadata included (its token depths would move if the ids changed token counts).
    table = _as_old_ids((tmp_path / "off" / INSTRUCTIONS_FILENAME).read_text(encoding="utf-8"))
    table = re.sub(r"\tAnnotator_(\d+)\t", r"\t\1\t", table)
    assert hashlib.sha256(table.encode()).hexdigest() == (
        "450281e7d3b9152114fc43769e2d2b390cbaf36896a76bbd8b154a388ef381d8")


def test_patient_content_does_not_depend_on_its_id() -> None:
    """Ids only name things: the same draws under two ids give the same record and questions apart from ids."""
    first, first_questions = generate_patient(random.Random(5), "9900000000001", length_tier="short")
    second, second_questions = generate_patient(random.Random(5), "synth-0001", length_tier="short")
    assert render_record(first).replace("9900000000001", "ID") == render_record(second).replace("synth-0001", "ID")
    assert ([item.question for item in first_questions] == [item.question for item in second_questions])
    assert ([item.reference_answers for item in first_questions]
            == [item.reference_answers for item in second_questions])


def test_synthetic_ids_are_numeric_fixed_width_and_bounded() -> None:
    assert [synthetic_patient_id(n) for n in (1, 20, 9999)] == ["9900000000001", "9900000000020", "9900000009999"]
    counter = default_counter()
    for number in (1, 9, 10, 99, 100, 999, 1000, 4321, 9999):  # the same cl100k count as the first ids
        assert (counter.count(render_record(PatientRecord(patient_id=synthetic_patient_id(number))))
                == counter.count(render_record(PatientRecord(patient_id=f"synth-{number:04d}"))))
    for bad in (0, 10_000, True, "1"):
        with pytest.raises(MedalignError, match="synthetic patient number"):
            synthetic_patient_id(bad)


def test_cohort_refuses_a_folder_with_older_layout_records(tmp_path: Path) -> None:
    """Records in both `ehrs/` and `medalign_ehr_xml/` would not open; the writer says so before writing."""
    (tmp_path / "ehrs").mkdir()
    (tmp_path / "ehrs" / "synth-0001.xml").write_text("<eventstream person_id='synth-0001'></eventstream>")
    with pytest.raises(MedalignError, match="older layout") as caught:
        generate_cohort(tmp_path, n_patients=1, seed=3)
    assert str(tmp_path / "ehrs") in str(caught.value)
    assert not (tmp_path / RELEASE_EHRS_DIRNAME).exists()


def test_written_files_are_readable_by_other_users(tmp_path: Path) -> None:
    """Atomic writes start from mkstemp's 0600; a cohort is shared data, so every file is 0644."""
    generate_cohort(tmp_path / "cohort", n_patients=2, seed=3)
    files = [path for path in (tmp_path / "cohort").rglob("*") if path.is_file()]
    assert len(files) == 4
    assert {path.name: path.stat().st_mode & 0o777 for path in files} == {path.name: 0o644 for path in files}


def test_different_seeds_give_different_cohorts(tmp_path: Path) -> None:
    generate_cohort(tmp_path / "a", n_patients=2, seed=3)
    generate_cohort(tmp_path / "b", n_patients=2, seed=4)
    assert _file_bytes(tmp_path / "a") != _file_bytes(tmp_path / "b")


def test_generate_patient_is_a_function_of_its_rng() -> None:
    one = generate_patient(random.Random(11), "9900000000042", length_tier="short")
    two = generate_patient(random.Random(11), "9900000000042", length_tier="short")
    assert one == two
    record, instructions = one
    assert record.patient_id == "9900000000042"
    assert 6 <= len(instructions) <= 10
    assert all(item.patient_id == "9900000000042" for item in instructions)


# ----------------------------------------------------------------------------------------------- the files


def test_layout_and_read_back(cohort) -> None:
    out, summary, records, instructions = cohort
    ids = [patient.patient_id for patient in summary.patients]
    assert ids == [str(9_900_000_000_000 + i) for i in range(1, 21)]
    assert sorted(records) == ids
    for patient in summary.patients:
        record = records[patient.patient_id]
        assert len(record.encounters) == patient.n_encounters
        assert record.n_events == patient.n_events
        assert record.demographics.birthdate is not None and record.demographics.gender in ("FEMALE", "MALE")
        # encounters in time order, events inside their encounter's span
        starts = [enc.start for enc in record.encounters]
        assert starts == sorted(starts)
        for enc in record.encounters:
            assert all(enc.start <= ev.timestamp <= enc.end for ev in enc.events)
    assert summary.n_instructions == len(instructions)
    text = (out / INSTRUCTIONS_FILENAME).read_text(encoding="utf-8")
    header = next(csv.reader([text.splitlines()[0]], delimiter="\t"))
    assert header[:6] == ["instruction_id", "question", "person_id", "filename", "clinician_response", "annotator_num"]
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    assert {row["annotator_num"] for row in rows} == {"Annotator_1"}
    questions = list(csv.DictReader((out / MODEL_RESPONSES_FILENAME).read_text(encoding="utf-8").splitlines(),
                                    delimiter="\t"))
    assert [row["instruction_id"] for row in questions] == [item.instruction_id for item in instructions]


def test_records_have_realistic_coded_content(cohort) -> None:
    _, _, records, _ = cohort
    everything = [ev for record in records.values() for ev in _events(record)]
    codes = {ev.code for ev in everything if ev.code}
    for code in (A1C, "LOINC/2160-0", "LOINC/13457-7", "LOINC/718-7", "LOINC/2823-3", "LOINC/2951-2",
                 "LOINC/2345-7", "LOINC/3016-3", "LOINC/8480-6", "LOINC/8867-4", "LOINC/29463-7", "LOINC/8310-5",
                 "LOINC/59408-5"):
        assert code in codes, code
    vocabularies = {code.split("/")[0] for code in codes}
    assert {"ICD10CM", "LOINC", "RxNorm", "CPT4", "Visit"} <= vocabularies
    encounter_types = {enc.type for record in records.values() for enc in record.encounters}
    assert encounter_types == {"Office Visit", "Laboratory Visit", "Emergency Room Visit", "Inpatient Visit"}
    note_names = {ev.name for ev in everything if ev.kind is EventKind.note}
    assert {"Progress note", "Discharge summary", "Diagnostic imaging study", "Emergency department Note"} <= note_names
    # multi-day admissions
    stays = [(enc.end - enc.start).days for record in records.values() for enc in record.encounters
             if enc.type == "Inpatient Visit"]
    assert stays and max(stays) >= 3
    # drug events carry dose text; measurements carry numeric values and units
    assert all(ev.value for ev in everything if ev.kind is EventKind.drug)
    for ev in everything:
        if ev.kind is EventKind.measurement:
            float(ev.value)
            assert ev.unit


def test_notes_mention_the_encounters_own_values(cohort) -> None:
    _, _, records, _ = cohort
    checked = 0
    for record in records.values():
        for enc in record.encounters:
            notes = [ev for ev in enc.events if ev.name == "Progress note" and ev.text.startswith("PROGRESS NOTE")]
            a1cs = [ev for ev in enc.events if ev.code == A1C]
            if notes and a1cs:
                assert f"Hemoglobin A1c: {a1cs[-1].value}%" in notes[0].text
                checked += 1
    assert checked >= 20


def test_diabetes_trajectory_is_coherent(cohort) -> None:
    """A new diabetes diagnosis comes with a diagnostic A1c and a metformin start in the same visit."""
    _, _, records, _ = cohort
    diabetics = 0
    for record in records.values():
        for enc in record.encounters:
            dx = [ev for ev in enc.events
                  if ev.kind is EventKind.condition and (ev.code or "").startswith("ICD10CM/E11")]
            if not dx:
                continue
            diabetics += 1
            if enc is not record.encounters[0]:  # diagnosed within the record, not brought along
                assert any(float(ev.value) >= 6.5 for ev in enc.events if ev.code == A1C)
                assert any(ev.kind is EventKind.drug and "metformin" in (ev.name or "") for ev in enc.events)
            break
    assert diabetics >= 3


# ----------------------------------------------------------------------------------------------- lengths


def test_record_length_spread(cohort) -> None:
    _, summary, records, _ = cohort
    counter = default_counter()
    tokens = {pid: counter.count(render_record(record, include_ids=False)) for pid, record in records.items()}
    assert tokens == {patient.patient_id: patient.n_tokens for patient in summary.patients}
    over_40k = sum(1 for n in tokens.values() if n > 40_000)
    assert 3 <= over_40k <= 8
    assert sum(1 for n in tokens.values() if n > 80_000) >= 2
    assert max(tokens.values()) <= 130_000
    assert sum(1 for n in tokens.values() if n <= 5_500) >= 3
    assert summary.n_patients_over(40_000) == over_40k


def test_tiers_are_assigned_with_the_documented_shares(cohort) -> None:
    _, summary, _, _ = cohort
    counts = {name: sum(1 for p in summary.patients if p.length_tier == name) for name in LENGTH_TIERS}
    assert counts == {"short": 5, "medium": 9, "long": 3, "very_long": 3}


# -------------------------------------------------------------------------------------------- instructions


def test_instruction_shape(cohort) -> None:
    _, summary, records, instructions = cohort
    for patient in summary.patients:
        mine = [item for item in instructions if item.patient_id == patient.patient_id]
        assert 6 <= len(mine) <= 10
        assert len(mine) == patient.n_instructions
    assert len({item.instruction_id for item in instructions}) == len(instructions)
    for item in instructions:
        assert len(item.reference_answers) == 1 and item.reference_answers[0]
        assert item.category and item.metadata["template"]
        assert item.time_anchor is not None
        assert item.time_anchor <= records[item.patient_id].last_timestamp
    templates = {item.metadata["template"] for item in instructions}
    assert templates >= {"most_recent_value", "value_on_date", "first_value", "first_diagnosis", "count_visits",
                         "medication_history", "summarize_stay", "vitals_on_date", "medication_stopped",
                         "most_recent_value_earlier_anchor"}
    assert any(item.question == "What was the most recent hemoglobin A1c?" for item in instructions)
    assert any(item.metadata["anchor"] == "earlier" and item.time_anchor < records[item.patient_id].last_timestamp
               for item in instructions)


def test_categories_come_from_the_medalign_taxonomy(cohort, shared_data: Path) -> None:
    _, _, _, instructions = cohort
    with open(shared_data / "medalign_sample" / "instruction-taxonomy.csv", newline="", encoding="utf-8") as handle:
        taxonomy = {(row["category"], row["subcategory"]) for row in csv.DictReader(handle)}
    for item in instructions:
        assert (item.metadata["taxonomy_category"], item.category) in taxonomy


def test_every_evidence_id_exists_in_its_record(cohort) -> None:
    _, _, records, instructions = cohort
    for item in instructions:
        known = {ev.event_id for ev in _events(records[item.patient_id])}
        assert item.evidence_event_ids, item.instruction_id
        assert set(item.evidence_event_ids) <= known, item.instruction_id
        # evidence exists at the time the question is asked
        by_id = {ev.event_id: ev for ev in _events(records[item.patient_id])}
        assert all(by_id[eid].timestamp <= item.time_anchor for eid in item.evidence_event_ids)


def _check_answer(item: Instruction, record: PatientRecord) -> None:
    """Recompute the gold answer from the record alone and compare it with the written one."""
    events = _events(record)
    by_id = {ev.event_id: ev for ev in events}
    evidence = [by_id[eid] for eid in item.evidence_event_ids]
    answer = item.reference_answers[0]
    meta = item.metadata
    template = meta["template"]
    if template in ("most_recent_value", "most_recent_value_earlier_anchor"):
        series = [ev for ev in events if ev.code == meta["code"] and ev.timestamp <= item.time_anchor]
        latest = max(series, key=lambda ev: ev.timestamp)
        assert evidence == [latest]
        assert answer.startswith(latest.value) and _day(latest.timestamp) in answer
    elif template == "value_on_date":
        day = re.search(r"on (\d{4}-\d{2}-\d{2})\?$", item.question).group(1)
        that_day = [ev for ev in events if ev.code == meta["code"] and _day(ev.timestamp) == day]
        assert evidence == that_day and len(that_day) == 1
        assert answer.startswith(that_day[0].value)
    elif template == "first_value":
        first = min((ev for ev in events if ev.code == meta["code"]), key=lambda ev: ev.timestamp)
        assert evidence == [first] and answer.startswith(first.value) and _day(first.timestamp) in answer
    elif template == "first_diagnosis":
        family = meta["code"].rsplit(".", 1)[0]
        matches = [ev for ev in events if ev.kind is EventKind.condition
                   and (ev.code == family or (ev.code or "").startswith(family + "."))]
        first = min(matches, key=lambda ev: ev.timestamp)
        assert evidence == [first] and answer.startswith(_day(first.timestamp))
    elif template == "count_visits":
        low, high = meta["start"], meta["end"]
        visits = [ev for ev in events if ev.kind is EventKind.visit and ev.code == meta["visit_code"]
                  and low <= _day(ev.timestamp) <= high]
        assert f"between {low} and {high}" in item.question
        assert evidence == visits and answer.startswith(f"{len(visits)} ")
    elif template == "medication_history":
        assert all(ev.kind is EventKind.drug for ev in evidence)
        for ev in evidence:
            assert f"{ev.name} (first prescribed {_day(ev.timestamp)})" in answer
            earlier_same = [other for other in events if other.kind is EventKind.drug
                            and other.timestamp < ev.timestamp and other.code == ev.code]
            assert not earlier_same  # the first prescription of that product
    elif template == "vitals_on_date":
        systolic, diastolic = evidence
        assert systolic.code == "LOINC/8480-6" and diastolic.code == "LOINC/8462-4"
        assert answer == f"{systolic.value}/{diastolic.value} mmHg"
        assert _day(systolic.timestamp) in item.question
    elif template == "summarize_stay":
        diagnosis, note = evidence
        assert diagnosis.kind is EventKind.condition and diagnosis.code == meta["diagnosis"]
        assert note.kind is EventKind.note and meta["start"] in note.text
        assert meta["start"] in answer
    elif template == "summarize_visit":
        (note,) = evidence
        assert note.kind is EventKind.note and f"Date of service: {meta['date']}" in note.text
    elif template == "medication_stopped":
        note = evidence[0]
        assert note.kind is EventKind.note
        assert meta["ingredient"].lower() in note.text.lower()
        assert re.search(r"discontinu", note.text, re.IGNORECASE)
        assert meta["date"] in answer
    else:  # pragma: no cover - a new template needs a check here
        raise AssertionError(f"no check for template {template}")


def test_gold_answers_agree_with_their_evidence(cohort) -> None:
    _, _, records, instructions = cohort
    for item in instructions:
        _check_answer(item, records[item.patient_id])


def test_most_recent_a1c_is_the_latest_a1c_before_the_anchor(cohort) -> None:
    _, _, records, instructions = cohort
    asked = [item for item in instructions if item.question == "What was the most recent hemoglobin A1c?"]
    assert len(asked) >= 10
    for item in asked:
        a1cs = [ev for ev in _events(records[item.patient_id]) if ev.code == A1C and ev.timestamp <= item.time_anchor]
        latest = a1cs[-1]
        assert item.evidence_event_ids == [latest.event_id]
        assert item.reference_answers[0] == f"{latest.value}% on {_day(latest.timestamp)}"


# ----------------------------------------------------------------------------------------- evidence depth


def test_evidence_depth_metadata_matches_the_record(cohort) -> None:
    _, _, records, instructions = cohort
    counter = default_counter()
    for pid, record in list(records.items())[:6]:
        total, from_end = evidence_depths(record, counter)
        for item in (i for i in instructions if i.patient_id == pid):
            oldest = max(from_end[eid] for eid in item.evidence_event_ids)
            assert item.metadata["record_tokens"] == total
            assert item.metadata["evidence_tokens_from_end"] == oldest
            assert item.metadata["evidence_depth"] == pytest.approx(oldest / total, abs=1e-4)


def test_event_line_numbers_point_at_each_events_line(cohort) -> None:
    """`evidence_depths` weighs lines by `event_line_numbers`; notes span several lines, so count them right."""
    _, _, records, _ = cohort
    record = records[synthetic_patient_id(1)]
    events = _events(record)
    assert any("\n" in (ev.text or "") for ev in events)
    for include_ids in (True, False):
        lines = render_record(record, include_ids=include_ids).split("\n")
        numbers = event_line_numbers(record, include_ids=include_ids)
        assert len(numbers) == len(events)
        for event, number in zip(events, numbers):
            line = lines[number].strip()
            assert line.startswith("<event ") and f'name="{event.name}"' in line
            if include_ids:
                assert line.startswith(f'<event id="{event.event_id}"')


def test_evidence_sits_at_varied_depths(cohort) -> None:
    """Cutting to the most recent 2k-32k tokens must lose a real share of the answers, but not all of them."""
    _, summary, _, instructions = cohort
    depths = summary.evidence_depths
    assert len(depths) == len(instructions) and all(0.0 <= d <= 1.0 for d in depths)
    assert sum(1 for d in depths if d < 0.2) >= 10  # recent evidence
    assert sum(1 for d in depths if d > 0.7) >= 30  # old evidence

    def lost_at(budget: int) -> float:
        return summary.share_of_evidence_beyond(budget, instructions)

    assert 0.5 <= lost_at(2_000) <= 0.97
    assert 0.08 <= lost_at(32_000) <= 0.5
    assert lost_at(2_000) > lost_at(8_000) > lost_at(32_000)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [0, -3, 10_000, True, 2.5])
def test_bad_patient_count_is_refused(tmp_path: Path, bad) -> None:
    with pytest.raises(MedalignError, match="n_patients"):
        generate_cohort(tmp_path, n_patients=bad)


def test_unknown_tier_and_unsafe_id_are_refused() -> None:
    with pytest.raises(MedalignError, match="tier"):
        generate_patient(random.Random(1), "9900000000001", length_tier="gigantic")
    with pytest.raises(MedalignError):
        generate_patient(random.Random(1), "../escape", length_tier="short")


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.3"])
def test_bad_copy_forward_share_is_refused(tmp_path: Path, bad) -> None:
    with pytest.raises(MedalignError, match="copy_forward"):
        generate_cohort(tmp_path, n_patients=1, copy_forward=bad)


# ---------------------------------------------------------------------------------------- copied-forward notes

SHINGLE_WORDS = 8


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i:i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def _share_repeating_the_previous_note(records: dict[str, PatientRecord], overlap: float) -> float:
    """Share of notes that repeat at least `overlap` of the shingles of the patient's previous note of their kind."""
    repeating = compared = 0
    for record in records.values():
        previous: dict[str, set] = {}
        for event in _events(record):
            if event.kind is not EventKind.note:
                continue
            shingles = _shingles(event.text)
            before = previous.get(event.name)
            if before:
                compared += 1
                repeating += len(before & shingles) / len(before) >= overlap
            previous[event.name] = shingles
    return repeating / compared


@pytest.fixture(scope="module")
def copied_cohort(tmp_path_factory) -> tuple[dict[str, PatientRecord], list[Instruction]]:
    out = tmp_path_factory.mktemp("copied-forward-cohort")
    generate_cohort(out, n_patients=20, seed=7, copy_forward=0.3)
    records = {path.stem: read_record(path) for path in sorted((out / RELEASE_EHRS_DIRNAME).glob("*.xml"))}
    return records, read_instruction_table(out / INSTRUCTIONS_FILENAME)


def test_copy_forward_makes_near_duplicate_note_spans(cohort, copied_cohort) -> None:
    """Templated notes already repeat some text; copying forward makes far more notes near-copies of the last one."""
    _, _, records, _ = cohort
    copied_records, _ = copied_cohort
    plain = _share_repeating_the_previous_note(records, 0.6)
    copied = _share_repeating_the_previous_note(copied_records, 0.6)
    assert plain < 0.08
    assert copied > 0.15 and copied > 3 * plain


def test_copied_forward_cohort_keeps_gold_evidence_on_the_first_note(copied_cohort) -> None:
    records, instructions = copied_cohort
    copied_evidence = 0
    for item in instructions:
        record = records[item.patient_id]
        _check_answer(item, record)
        events = _events(record)
        position = {ev.event_id: index for index, ev in enumerate(events)}
        for source_id, copy_ids in item.metadata["evidence_copied_to"].items():
            assert source_id in item.evidence_event_ids
            source = events[position[source_id]]
            for copy_id in copy_ids:
                copy = events[position[copy_id]]
                copied_evidence += 1
                # a later note of the same kind that repeats a span of the evidence note's body
                assert position[copy_id] > position[source_id] and copy.timestamp >= source.timestamp
                assert copy.name == source.name and copy.text != source.text
                assert len(_shingles(source.text) & _shingles(copy.text)) >= 5
        if item.metadata["template"] == "medication_stopped":
            # the line that says why the drug was stopped is first written in the evidence note
            note = events[position[item.evidence_event_ids[0]]]
            (line,) = [line for line in note.text.splitlines()
                       if re.search(r"discontinu", line, re.IGNORECASE)
                       and item.metadata["ingredient"].lower() in line.lower()][:1]
            first = next(ev for ev in events if ev.kind is EventKind.note and line in ev.text)
            assert first.event_id == note.event_id
    assert copied_evidence >= 3

