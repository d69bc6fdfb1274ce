"""MedAlign's instruction tables: reading, merging annotators, our extension columns, model responses."""

from __future__ import annotations

import csv

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medalign_rag.errors import MedalignError
from medalign_rag.records.instructions import (
    INSTRUCTION_COLUMNS,
    parse_bool,
    read_instruction_table,
    read_model_responses,
    write_instruction_table,
)
from medalign_rag.records.model import Instruction

RELEASE_HEADER = "instruction_id\tquestion\tperson_id\tfilename\tclinician_response\tannotator_num\tevidence\tis_sufficient"


def write(tmp_path: Path, text: str, name: str = "t.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_release_table_merges_annotators(tmp_path: Path) -> None:
    # Quoted fields hold tabs, quotes and newlines, as pandas writes them.
    path = write(
        tmp_path,
        RELEASE_HEADER + "\n"
        '101\tWhat is the last creatinine?\t555\t555.xml\t"1.2 mg/dL on 1/2/2019.\nStable ""trend""."\t1\tlab\tTrue\n'
        "102\tSummarize the stay.\t556\t556.xml\t\t1\t\tFalse\n"
        '101\tWhat is the last creatinine?\t555\t555.xml\t"1.2\twith tab"\t2\t\tTrue\n',
    )
    first, second = read_instruction_table(path)
    assert first.instruction_id == "101" and first.patient_id == "555"
    assert first.reference_answers == ['1.2 mg/dL on 1/2/2019.\nStable "trend".', "1.2\twith tab"]
    assert second.reference_answers == []  # empty answers are not answers
    assert first.time_anchor is None and first.evidence_event_ids == [] and first.metadata == {}


def test_extension_columns(tmp_path: Path) -> None:
    header = "Instruction_ID\tquestion\tperson_id\ttime_anchor\tevidence_event_ids\tcategory\tmetadata_json\n"
    path = write(
        tmp_path,
        header + 'q1\tWhen?\tp1\t2133-12-31 23:59:00\te1  e2\tlab\t{"template": "x", "n": 2}\n'
        "q2\tHow?\tp1\t2020-01-02T03:04:05\t\t\t\n",
    )
    one, two = read_instruction_table(path)
    assert one.time_anchor == datetime(2133, 12, 31, 23, 59)
    assert one.evidence_event_ids == ["e1", "e2"]
    assert one.category == "lab" and one.metadata == {"template": "x", "n": 2}
    assert two.time_anchor == datetime(2020, 1, 2, 3, 4, 5) and two.category is None


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "instruction_id\tquestion\tfilename\n1\tq\tx.xml\n")
    with pytest.raises(MedalignError) as caught:
        read_instruction_table(path)
    assert str(caught.value).startswith(f"{path}:1: ") and "'person_id'" in str(caught.value)


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ("1\tq\tp\tnot a time\t\t", "time_anchor"),
        ("1\tq\tp\t\t[1, 2]\t", "metadata_json"),
        ("1\tq\tp\t\t{oops\t", "metadata_json"),
        ("1\tq\t../etc\t\t\t", "person_id"),
        ("\tq\tp\t\t\t", "instruction_id"),
        ("1\t \tp\t\t\t", "question"),
    ],
)
def test_bad_values_name_file_line_and_column(tmp_path: Path, row: str, column: str) -> None:
    header = "instruction_id\tquestion\tperson_id\ttime_anchor\tmetadata_json\textra"
    # The good first row spans two lines, so the bad row starts on line 4.
    path = write(tmp_path, f'{header}\n0\t"multi\nline"\tp\t\t\t\n{row}\n')
    with pytest.raises(MedalignError) as caught:
        read_instruction_table(path)
    assert str(caught.value).startswith(f"{path}:4: column {column!r}")


def test_conflicting_annotator_rows_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "instruction_id\tquestion\tperson_id\n1\tq\tp1\n1\tq\tp2\n")
    with pytest.raises(MedalignError, match=r":3: column 'person_id'.*line 2"):
        read_instruction_table(path)


def test_missing_and_empty_tables(tmp_path: Path) -> None:
    with pytest.raises(MedalignError, match="table not found"):
        read_instruction_table(tmp_path / "none.tsv")
    with pytest.raises(MedalignError, match="empty"):
        read_instruction_table(write(tmp_path, ""))


def test_write_then_read_and_determinism(tmp_path: Path) -> None:
    instructions = [
        Instruction(
            instruction_id="a1",
            patient_id="p-1",
            question='Any "allergies"?\tList them.',
            reference_answers=["Penicillin\r\n(rash)", "None known é 🙂"],
            time_anchor=datetime(2020, 5, 1, 12, 0, 0, 250),
            evidence_event_ids=["p-1-enc0000-e00001", "x.2"],
            category="allergies",
            metadata={"z": [1, 2], "a": {"b": None}},
        ),
        Instruction(instruction_id="a2", patient_id="p-2", question="Summary?"),
    ]
    write_instruction_table(instructions, tmp_path / "one.tsv")
    write_instruction_table(instructions, tmp_path / "two.tsv")
    assert (tmp_path / "one.tsv").read_bytes() == (tmp_path / "two.tsv").read_bytes()
    assert read_instruction_table(tmp_path / "one.tsv") == instructions
    with open(tmp_path / "one.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == list(INSTRUCTION_COLUMNS)
    assert [(row["filename"], row["annotator_num"]) for row in rows] == [("p-1.xml", "1"), ("p-1.xml", "2"),
                                                                         ("p-2.xml", "")]


def test_writer_rejects_ids_the_table_cannot_hold(tmp_path: Path) -> None:
    bad = Instruction(instruction_id="1", patient_id="p", question="q", evidence_event_ids=["a b"])
    with pytest.raises(MedalignError, match="white space"):
        write_instruction_table([bad], tmp_path / "x.tsv")
    assert not (tmp_path / "x.tsv").exists()


_cell_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    questions=st.lists(_cell_text.filter(str.strip), min_size=1, max_size=4),
    answers=st.lists(_cell_text.filter(str.strip), max_size=3),
)
def test_any_text_round_trips(tmp_path: Path, questions: list[str], answers: list[str]) -> None:
    instructions = [
        Instruction(instruction_id=str(n), patient_id="p", question=q, reference_answers=answers)
        for n, q in enumerate(questions)
    ]
    write_instruction_table(instructions, tmp_path / "h.tsv")
    assert read_instruction_table(tmp_path / "h.tsv") == instructions


# --------------------------------------------------------------------------------------------- model responses


def test_model_responses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "instruction_id\tquestion\tperson_id\tfilename\tmodel_name\tgpt_response_text\tbinary_correct\tmodel_rank"
        "\tclinician_response\tis_used_eval\n"
        '1\tQ?\t555\t555.xml\tgpt-4 (32k)\t"Yes,\nclearly."\tTrue\t1\tYes.\t1\n'
        "1\tQ?\t555\t555.xml\tmpt-7b\tNo\t0.0\t2.5\t\t1\n"
        "1\tQ?\t555\t555.xml\tvicuna\t\t\t\t\t0\n",
    )
    best, middle, unranked = read_model_responses(path)
    assert (best.model_name, best.response, best.rank, best.binary_correct) == ("gpt-4 (32k)", "Yes,\nclearly.", 1.0,
                                                                                 True)
    assert best.clinician_response == "Yes." and best.patient_id == "555"
    assert (middle.rank, middle.binary_correct, middle.clinician_response) == (2.5, False, None)
    assert (unranked.rank, unranked.binary_correct, unranked.response) == (None, None, "")


def test_model_response_column_prefers_model_response(tmp_path: Path) -> None:
    path = write(tmp_path, "instruction_id\tperson_id\tmodel_name\tresponse_len\tmodel_response\n1\tp\tm\t3\tabc\n")
    assert read_model_responses(path)[0].response == "abc"


def test_model_responses_errors(tmp_path: Path) -> None:
    no_response = write(tmp_path, "instruction_id\tperson_id\tmodel_name\tclinician_response\n1\tp\tm\tx\n", "a.tsv")
    with pytest.raises(MedalignError, match="'model_response'") as caught:
        read_model_responses(no_response)
    assert str(caught.value).startswith(f"{no_response}:1:")
    bad_rank = write(tmp_path, "instruction_id\tperson_id\tmodel_name\tmodel_response\tmodel_rank\n1\tp\tm\tx\tfirst\n",
                     "b.tsv")
    with pytest.raises(MedalignError, match=r"b\.tsv:2: column 'model_rank'"):
        read_model_responses(bad_rank)
    bad_bool = write(tmp_path, "instruction_id\tperson_id\tmodel_name\tmodel_response\tbinary_correct\n1\tp\tm\tx\tmaybe\n",
                     "c.tsv")
    with pytest.raises(MedalignError, match=r"c\.tsv:2: column 'binary_correct'"):
        read_model_responses(bad_bool)


@pytest.mark.parametrize(("raw", "expected"), [("TRUE", True), (" 1 ", True), ("yes", True), ("0.0", False),
                                               ("F", False), ("", None), ("NaN", None)])
def test_parse_bool(raw: str, expected: bool | None) -> None:
    assert parse_bool(raw) is expected


def test_tables_interoperate_with_pandas(tmp_path: Path) -> None:
    """The release's tables come from pandas; ours must read theirs and pandas must read ours."""
    pandas = pytest.importorskip("pandas")
    awkward = 'He said "no".\r\nNext\tline & <tag> é'
    frame = pandas.DataFrame(
        {"instruction_id": [7, 7], "question": [awkward, awkward], "person_id": [42, 42],
         "clinician_response": ["first", awkward], "annotator_num": [1, 2], "extra": [None, 3.5]}
    )
    frame.to_csv(tmp_path / "pandas.tsv", sep="\t", index=False)
    (instruction,) = read_instruction_table(tmp_path / "pandas.tsv")
    assert (instruction.instruction_id, instruction.patient_id, instruction.question) == ("7", "42", awkward)
    assert instruction.reference_answers == ["first", awkward]

    write_instruction_table([instruction], tmp_path / "ours.tsv")
    ours = pandas.read_csv(tmp_path / "ours.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(ours["clinician_response"]) == ["first", awkward]
    assert list(ours["question"]) == [awkward, awkward]
