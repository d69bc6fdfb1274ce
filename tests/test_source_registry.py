"""Record-source registry, detection, and the MedAlign folder in both of its real layouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.records.dataset import DataFolder, open_data_folder
from medalign_rag.records.instructions import (
    read_instruction_table,
    read_model_responses,
    write_model_responses_table,
    write_release_tables,
)
from medalign_rag.records.model import Instruction, ModelResponse
from medalign_rag.records.serialize import write_release_xml
from medalign_rag.records.sources import RecordSource, detect_format, open_source, source_names
from tests.factories import make_record


def test_registry_lists_every_source_and_each_satisfies_the_protocol(tmp_path: Path) -> None:
    assert source_names() == ("medalign-xml", "meds", "omop", "fhir")
    folder = tmp_path / "xml"
    (folder / "ehrs").mkdir(parents=True)
    write_release_xml(make_record(1, patient_id="p1"), folder / "ehrs" / "p1.xml")
    source = open_source(folder)
    assert isinstance(source, DataFolder) and isinstance(source, RecordSource)


def test_unknown_data_and_unknown_format_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(MedalignError, match="cannot tell what records these are.*--format"):
        open_source(tmp_path)
    with pytest.raises(MedalignError, match="unknown data format 'csv' \\(known: medalign-xml, meds, omop, fhir\\)"):
        open_source(tmp_path, format="csv")
    with pytest.raises(MedalignError, match="data not found"):
        detect_format(tmp_path / "missing")


def _release(folder: Path, dirname: str) -> Path:
    (folder / dirname).mkdir(parents=True, exist_ok=True)
    for patient_id in ("125", "12"):
        write_release_xml(make_record(int(patient_id), n_encounters=2, patient_id=patient_id),
                          folder / dirname / f"{patient_id}.xml")
    return folder


def test_release_layout_opens_as_is(tmp_path: Path) -> None:
    """The release as MedHELM opens it: medalign_ehr_xml/, Annotator_1 rows, questions in the model table."""
    folder = _release(tmp_path / "release", "medalign_ehr_xml")
    (folder / "clinician-instruction-responses.tsv").write_text(
        "instruction_id\tquestion\tperson_id\tfilename\tclinician_response\tannotator_num\n"
        "7\tAny allergies?\t12\t12.xml\tNone known.\tAnnotator_1\n"
        "7\tAny allergies?\t12\t12.xml\tNKDA\tAnnotator_2\n")
    (folder / "clinician-reviewed-model-responses.tsv").write_text(
        "instruction_id\tquestion\tperson_id\tfilename\tmodel_name\tmodel_response\tbinary_correct\tmodel_rank\n"
        "7\tAny allergies?\t12\t12.xml\tgpt-4 (32k)\tNone.\t1\t1\n"
        "9\tLast A1c?\t125\t125.xml\tgpt-4 (32k)\t7.1%\t0\t2\n")
    source = open_source(folder)
    assert isinstance(source, DataFolder) and source.ehrs_dir == folder / "medalign_ehr_xml"
    assert source.patient_ids() == ["12", "125"]
    assert source.load_record("125").patient_id == "125"
    instructions = source.instructions()
    assert [(i.instruction_id, i.question, i.reference_answers) for i in instructions] == [
        ("7", "Any allergies?", ["None known.", "NKDA"]), ("9", "Last A1c?", [])]
    assert len(source.model_responses()) == 2
    digest = hashlib.sha256((folder / "medalign_ehr_xml" / "12.xml").read_bytes()).hexdigest()
    assert source.fingerprint("12") == digest


def test_both_folder_names_and_which_wins(tmp_path: Path) -> None:
    old = _release(tmp_path / "old", "ehrs")
    assert open_data_folder(old).ehrs_dir == old / "ehrs"
    both = _release(tmp_path / "both", "ehrs")
    (both / "medalign_ehr_xml").mkdir()  # an empty second folder does not hide the records
    assert open_data_folder(both).patient_ids() == ["12", "125"]
    _release(tmp_path / "both", "medalign_ehr_xml")
    with pytest.raises(MedalignError, match="both medalign_ehr_xml/ and ehrs/ hold XML records"):
        open_data_folder(both)


def test_release_tables_round_trip_in_helm_form(tmp_path: Path) -> None:
    instructions = [
        Instruction(instruction_id="1", patient_id="12", question="Q1?", reference_answers=["a", "b"]),
        Instruction(instruction_id="2", patient_id="125", question="Q2?"),
    ]
    responses = [ModelResponse(instruction_id="1", patient_id="12", question="Q1?", model_name="m", response="r",
                               rank=1.0, binary_correct=True)]
    table, model_table = write_release_tables(instructions, tmp_path, responses)
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    assert [row[rows[0].index("annotator_num")] for row in rows[1:]] == ["Annotator_1", "Annotator_2", ""]
    assert read_instruction_table(table) == instructions
    assert read_model_responses(model_table) == responses  # the question-only row is not a response
    _release(tmp_path, "medalign_ehr_xml")
    table.unlink()  # questions come from the model table alone now
    assert [(i.instruction_id, i.question) for i in open_data_folder(tmp_path).instructions()] == [
        ("1", "Q1?"), ("2", "Q2?")]


def test_model_table_without_questions_names_none(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    write_model_responses_table([], path)
    assert path.read_text().splitlines() == [
        "instruction_id\tquestion\tperson_id\tfilename\tmodel_name\tmodel_response\tbinary_correct\tmodel_rank\t"
        "clinician_response"]
    assert read_model_responses(path) == []
