"""MedAlign's tab-separated instruction tables: clinician answers and clinician-reviewed model responses.

The release writes these with pandas (tab separator, double-quote quoting), so answers may hold quotes, tabs and
newlines inside quoted fields; the csv module reads that dialect. Our own writer adds a few columns
(`time_anchor`, `evidence_event_ids`, `category`, `metadata_json`) that the release does not have.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

from medalign_rag.atomic import atomic_write_bytes
from medalign_rag.dates import naive_local
from medalign_rag.errors import MedalignError
from medalign_rag.records.model import Instruction, ModelResponse, check_patient_id

__all__ = [
    "INSTRUCTION_COLUMNS",
    "MODEL_RESPONSE_COLUMNS",
    "INSTRUCTIONS_FILENAME",
    "MODEL_RESPONSES_FILENAME",
    "read_instruction_table",
    "write_instruction_table",
    "read_model_responses",
    "read_model_response_questions",
    "write_model_responses_table",
    "write_release_tables",
    "parse_bool",
]

INSTRUCTIONS_FILENAME = "clinician-instruction-responses.tsv"
MODEL_RESPONSES_FILENAME = "clinician-reviewed-model-responses.tsv"

INSTRUCTION_COLUMNS = (
    "instruction_id",
    "question",
    "person_id",
    "filename",
    "clinician_response",
    "annotator_num",
    "time_anchor",
    "evidence_event_ids",
    "category",
    "metadata_json",
)
MODEL_RESPONSE_COLUMNS = (
    "instruction_id",
    "question",
    "person_id",
    "filename",
    "model_name",
    "model_response",
    "binary_correct",
    "model_rank",
    "clinician_response",
)
_INSTRUCTION_REQUIRED = ("instruction_id", "question", "person_id")
_RESPONSES_REQUIRED = ("instruction_id", "person_id", "model_name")

_TRUE_WORDS = {"1", "1.0", "true", "t", "yes", "y", "correct"}
_FALSE_WORDS = {"0", "0.0", "false", "f", "no", "n", "incorrect"}
_MISSING_WORDS = {"", "nan", "na", "n/a", "none", "null"}


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class _Row:
    line: int  # line on which the row starts (rows may span lines)
    cells: dict[str, str]


def _read_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[_Row]]:
    """Check the header and return (columns, rows); column names are matched case-insensitively."""
    if not path.is_file():
        raise MedalignError("table not found", path=path)
    rows: list[_Row] = []
    with io.StringIO(_decode_table(path), newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                raise MedalignError("the table is empty (no header line)", path=path, line=1)
            columns = [name.strip().lower() for name in header]
            for name in required:
                if name not in columns:
                    found = ", ".join(columns) or "none"
                    raise MedalignError(f"missing required column {name!r} (columns found: {found})", path=path, line=1)
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) > len(columns):
                    raise MedalignError(
                        f"row has {len(cells)} fields but the header has {len(columns)}", path=path, line=line
                    )
                rows.append(_Row(line, dict(zip(columns, cells))))
        except csv.Error as exc:
            raise MedalignError(f"cannot parse the table: {exc}", path=path, line=start) from None
    return columns, rows


def _decode_table(path: Path) -> str:
    """The whole table as text. Decoded in one piece, not as the csv reader pulls buffers, so a byte that is not
    UTF-8 is reported on its own line (counted from the decoder's byte offset), not on the line being read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MedalignError(f"cannot read the table: {exc.strerror or exc}", path=path) from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise MedalignError(f"byte 0x{data[exc.start]:02x} at column {column} is not UTF-8; save the table as UTF-8",
                            path=path, line=line) from None


def _bad(path: Path, row: _Row, column: str, problem: str) -> MedalignError:
    return MedalignError(f"column {column!r}: {problem}", path=path, line=row.line)


def _required_cell(path: Path, row: _Row, column: str) -> str:
    value = row.cells.get(column, "").strip()
    if not value:
        raise _bad(path, row, column, "empty value")
    return value


def _patient_id(path: Path, row: _Row) -> str:
    value = _required_cell(path, row, "person_id")
    try:
        return check_patient_id(value)
    except MedalignError as exc:
        raise _bad(path, row, "person_id", exc.message) from None


def _parse_time_anchor(path: Path, row: _Row) -> datetime | None:
    raw = row.cells.get("time_anchor", "").strip()
    if not raw:
        return None
    try:
        # the model's validator does this too, but rows merged by model_copy() below are not validated again
        return naive_local(datetime.fromisoformat(raw))
    except ValueError:
        raise _bad(path, row, "time_anchor", f"{raw!r} is not a timestamp (use YYYY-MM-DD HH:MM:SS)") from None


def _parse_metadata(path: Path, row: _Row) -> dict:
    raw = row.cells.get("metadata_json", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _bad(path, row, "metadata_json", f"not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise _bad(path, row, "metadata_json", f"expected a JSON object, got {type(value).__name__}")
    return value


def read_instruction_table(path: str | os.PathLike) -> list[Instruction]:
    """Read `clinician-instruction-responses.tsv` (or our extended version of it).

    Rows sharing an `instruction_id` (one per annotator) merge into one Instruction whose reference_answers are
    the non-empty `clinician_response` cells in file order. Instructions keep the order of their first row.
    """
    path = Path(path)
    _, rows = _read_rows(path, _INSTRUCTION_REQUIRED)
    merged: dict[str, Instruction] = {}
    first_line: dict[str, int] = {}
    for row in rows:
        instruction_id = _required_cell(path, row, "instruction_id")
        question = row.cells.get("question", "")
        if not question.strip():
            raise _bad(path, row, "question", "empty value")
        patient_id = _patient_id(path, row)
        answer = row.cells.get("clinician_response", "")
        time_anchor = _parse_time_anchor(path, row)
        evidence = row.cells.get("evidence_event_ids", "").split()
        category = row.cells.get("category", "").strip() or None
        metadata = _parse_metadata(path, row)

        existing = merged.get(instruction_id)
        if existing is None:
            merged[instruction_id] = Instruction(
                instruction_id=instruction_id,
                patient_id=patient_id,
                question=question,
                reference_answers=[answer] if answer.strip() else [],
                time_anchor=time_anchor,
                evidence_event_ids=evidence,
                category=category,
                metadata=metadata,
            )
            first_line[instruction_id] = row.line
            continue
        # Another annotator's row: the instruction itself must be the same one.
        for column, ours, theirs in (
            ("question", question.strip(), existing.question.strip()),
            ("person_id", patient_id, existing.patient_id),
            ("time_anchor", time_anchor, existing.time_anchor),
            ("evidence_event_ids", evidence, existing.evidence_event_ids),
            ("category", category, existing.category),
            ("metadata_json", metadata, existing.metadata),
        ):
            if ours and theirs and ours != theirs:
                raise _bad(
                    path,
                    row,
                    column,
                    f"instruction {instruction_id!r} has a different value on line {first_line[instruction_id]}",
                )
        updates = {
            "time_anchor": existing.time_anchor or time_anchor,
            "evidence_event_ids": existing.evidence_event_ids or evidence,
            "category": existing.category or category,
            "metadata": existing.metadata or metadata,
        }
        if answer.strip():
            updates["reference_answers"] = [*existing.reference_answers, answer]
        merged[instruction_id] = existing.model_copy(update=updates)
    return list(merged.values())


def parse_bool(raw: str) -> bool | None:
    """Lenient yes/no: 1/0, true/false, yes/no, t/f, y/n (any case); empty, 'nan' or 'NA' mean unknown (None)."""
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    if word in _MISSING_WORDS:
        return None
    raise ValueError(f"{raw!r} is not a yes/no value")


def _response_column(columns: list[str], path: Path) -> str:
    if "model_response" in columns:
        return "model_response"
    for name in columns:
        if "response" in name and "clinician" not in name:
            return name
    raise MedalignError(
        "missing required column 'model_response' (or another column named like '*response*', not 'clinician*')",
        path=path,
        line=1,
    )


def read_model_responses(path: str | os.PathLike) -> list[ModelResponse]:
    """Read `clinician-reviewed-model-responses.tsv`: one ModelResponse per row, in file order."""
    path = Path(path)
    columns, rows = _read_rows(path, _RESPONSES_REQUIRED)
    response_column = _response_column(columns, path)
    responses: list[ModelResponse] = []
    for row in rows:
        if not row.cells.get("model_name", "").strip() and not row.cells.get(response_column, "").strip():
            continue  # a row that only carries the question (what `write_release_tables` writes without responses)
        rank_raw = row.cells.get("model_rank", "").strip()
        rank: float | None = None
        if rank_raw.lower() not in _MISSING_WORDS:
            try:
                rank = float(rank_raw)
            except ValueError:
                raise _bad(path, row, "model_rank", f"{rank_raw!r} is not a number") from None
        try:
            correct = parse_bool(row.cells.get("binary_correct", ""))
        except ValueError as exc:
            raise _bad(path, row, "binary_correct", str(exc)) from None
        clinician_response = row.cells.get("clinician_response", "")
        responses.append(
            ModelResponse(
                instruction_id=_required_cell(path, row, "instruction_id"),
                patient_id=_patient_id(path, row),
                question=row.cells.get("question", ""),
                model_name=_required_cell(path, row, "model_name"),
                response=row.cells.get(response_column, ""),
                rank=rank,
                binary_correct=correct,
                clinician_response=clinician_response if clinician_response.strip() else None,
            )
        )
    return responses


def read_model_response_questions(path: str | os.PathLike) -> list[Instruction]:
    """The instructions the model-response table names (id, patient, question), once each, in file order.

    MedHELM takes its questions from this table; rows without a model response count too. A table without a
    `question` column names no questions ([]).
    """
    path = Path(path)
    columns, rows = _read_rows(path, ("instruction_id", "person_id"))
    if "question" not in columns:
        return []
    found: dict[str, Instruction] = {}
    for row in rows:
        instruction_id = _required_cell(path, row, "instruction_id")
        if instruction_id in found:
            continue
        question = row.cells.get("question", "")
        if not question.strip():
            raise _bad(path, row, "question", "empty value")
        found[instruction_id] = Instruction(
            instruction_id=instruction_id, patient_id=_patient_id(path, row), question=question
        )
    return list(found.values())


# ------------------------------------------------------------------------------------------------ writing


def _cell(value: str) -> str:
    # csv.writer with a "\n" line terminator leaves a lone "\r" unquoted, which its own reader then splits on;
    # quote every field that holds a separator, a quote or any line break.
    if any(char in value for char in '\t\n\r"'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _format_time_anchor(value: datetime | None) -> str:
    return value.isoformat(sep=" ") if value else ""


def write_instruction_table(
    instructions: Sequence[Instruction], path: str | os.PathLike, *, annotator_prefix: str = ""
) -> None:
    """Atomically write `instructions` as a tab-separated table that `read_instruction_table` reads back.

    One row per reference answer (annotator_num 1, 2, ... or, with `annotator_prefix="Annotator_"`, the
    release's `Annotator_1`, ...), or one row with an empty answer when there is none.
    The output depends only on the input, so the same instructions give a byte-identical file.
    """
    path = Path(path)
    lines = ["\t".join(INSTRUCTION_COLUMNS)]
    for instruction in instructions:
        check_patient_id(instruction.patient_id, path=str(path))
        for event_id in instruction.evidence_event_ids:
            if not event_id or any(char.isspace() for char in event_id):
                raise MedalignError(
                    f"instruction {instruction.instruction_id!r}: evidence event id {event_id!r} is empty or "
                    "contains white space, which the space-separated column cannot hold",
                    path=path,
                )
        shared = {
            "instruction_id": instruction.instruction_id,
            "question": instruction.question,
            "person_id": instruction.patient_id,
            "filename": f"{instruction.patient_id}.xml",
            "time_anchor": _format_time_anchor(instruction.time_anchor),
            "evidence_event_ids": " ".join(instruction.evidence_event_ids),
            "category": instruction.category or "",
            "metadata_json": (
                json.dumps(instruction.metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
                if instruction.metadata
                else ""
            ),
        }
        answers = instruction.reference_answers or [""]
        for number, answer in enumerate(answers, start=1):
            cells = {
                **shared,
                "clinician_response": answer,
                "annotator_num": f"{annotator_prefix}{number}" if instruction.reference_answers else "",
            }
            lines.append("\t".join(_cell(cells[column]) for column in INSTRUCTION_COLUMNS))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _format_bool(value: bool | None) -> str:
    return "" if value is None else ("1" if value else "0")


def _format_rank(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_model_responses_table(
    responses: Sequence[ModelResponse], path: str | os.PathLike, *, questions: Sequence[Instruction] = ()
) -> None:
    """Atomically write `clinician-reviewed-model-responses.tsv`: one row per response, then one row with the
    question alone (empty model_name and response) for each of `questions` that no response names, so that a
    reader taking its questions from this table (MedHELM) finds every instruction."""
    path = Path(path)
    lines = ["\t".join(MODEL_RESPONSE_COLUMNS)]
    answered = set()
    for response in responses:
        check_patient_id(response.patient_id, path=str(path))
        answered.add(response.instruction_id)
        cells = {
            "instruction_id": response.instruction_id, "question": response.question,
            "person_id": response.patient_id, "filename": f"{response.patient_id}.xml",
            "model_name": response.model_name, "model_response": response.response,
            "binary_correct": _format_bool(response.binary_correct), "model_rank": _format_rank(response.rank),
            "clinician_response": response.clinician_response or "",
        }
        lines.append("\t".join(_cell(cells[column]) for column in MODEL_RESPONSE_COLUMNS))
    for instruction in questions:
        if instruction.instruction_id in answered:
            continue
        check_patient_id(instruction.patient_id, path=str(path))
        cells = dict.fromkeys(MODEL_RESPONSE_COLUMNS, "")
        cells.update(instruction_id=instruction.instruction_id, question=instruction.question,
                     person_id=instruction.patient_id, filename=f"{instruction.patient_id}.xml")
        lines.append("\t".join(_cell(cells[column]) for column in MODEL_RESPONSE_COLUMNS))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def write_release_tables(
    instructions: Sequence[Instruction], out_dir: str | os.PathLike, responses: Sequence[ModelResponse] = ()
) -> tuple[Path, Path]:
    """Both tables of MedAlign's release in `out_dir`, as MedHELM reads them: the instruction table with
    `annotator_num` `Annotator_1`, ... and the model-response table holding every question."""
    out = Path(out_dir)
    instructions_path = out / INSTRUCTIONS_FILENAME
    responses_path = out / MODEL_RESPONSES_FILENAME
    write_instruction_table(instructions, instructions_path, annotator_prefix="Annotator_")
    write_model_responses_table(responses, responses_path, questions=instructions)
    return instructions_path, responses_path
