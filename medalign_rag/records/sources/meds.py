"""MEDS datasets (the Medical Event Data Standard of EHRSHOT, MIMIC-IV MEDS and the MEDS tooling).

    DIR/data/**/*.parquet       subject_id (int64), time (timestamp[us]), code (string), numeric_value (float32),
                                text_value (large_string), extra columns allowed; sorted by subject and time
    DIR/metadata/codes.parquet  code, description, parent_codes (optional: names for codes)
    DIR/metadata/dataset.json   dataset name and version (optional)

Each shard's schema is checked with the `meds` package. A patient is read without loading any shard whole: on the
first call a per-shard subject index is built from the `subject_id` column alone (which rows of which row group of
which file hold each subject), and `load_record` reads only those row groups (the last two stay cached, since
consecutive subjects share them) and slices the subject's rows out.

Events become timeline events named from `codes.parquet` (else from the code itself), with kinds from the code's
vocabulary prefix (`LOINC/...`, `LAB//...` -> measurement, `ICD10CM/...` -> condition, ...). Values: the numeric
value (float32, written in its shortest exact form), else the text value; the unit from a `unit` column when the
dataset has one, else from the last part of a `LAB//<item>//<unit>` code (the MIMIC-IV MEDS ETL's form). Visits come
from admission/discharge codes (`HOSPITAL_ADMISSION`...`HOSPITAL_DISCHARGE`, `ED_REGISTRATION`...`ED_OUT`) and from
`Visit/...` codes (EHRSHOT's form, ending at an `end` column when present, else that day); events outside any visit
are grouped per calendar day. Events with no time (static codes) fill the demographics (`MEDS_BIRTH`, `GENDER//F`,
`RACE//...`, `ETHNICITY//...`) or are counted and skipped. Event ids are `<subject>-e<position>` in the subject's
(time, code) order, so they are stable while the data is.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from medalign_rag.errors import MedalignError
from medalign_rag.records.model import (
    Demographics,
    Encounter,
    Event,
    EventKind,
    Instruction,
    ModelResponse,
    PatientRecord,
    check_patient_id,
)
from medalign_rag.records.sources import SourceWarnings, register_source

__all__ = ["MedsSource", "looks_like_meds", "kind_of_code", "VISIT_CODE_PAIRS"]

# (start code prefix, end code prefix): a visit runs from a start event to the next matching end event.
VISIT_CODE_PAIRS: tuple[tuple[str, str], ...] = (
    ("HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE"),
    ("ED_REGISTRATION", "ED_OUT"),
)
_OPEN_VISIT_PREFIXES = ("Visit/", "VISIT//", "VISIT/")

_KIND_BY_PREFIX: dict[str, EventKind] = {
    **{p: EventKind.measurement for p in ("LOINC", "LAB", "LABS", "MEASUREMENT", "VITAL", "VITALS",
                                          "SUBJECT_WEIGHT_AT_INFUSION", "SUBJECT_FLUID_OUTPUT")},
    **{p: EventKind.condition for p in ("ICD9CM", "ICD10CM", "ICD9", "ICD10", "SNOMED", "DIAGNOSIS", "CONDITION")},
    **{p: EventKind.drug for p in ("RXNORM", "ATC", "NDC", "MEDICATION", "DRUG", "CVX", "INFUSION_START",
                                   "INFUSION_END")},
    **{p: EventKind.procedure for p in ("CPT4", "HCPCS", "ICD9PROC", "ICD10PCS", "PROCEDURE")},
    **{p: EventKind.visit for p in ("VISIT", "HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "ED_REGISTRATION",
                                    "ED_OUT", "ICU_ADMISSION", "ICU_DISCHARGE", "TRANSFER_TO")},
    **{p: EventKind.note for p in ("NOTE", "NOTES")},
    **{p: EventKind.observation for p in ("MEDS_BIRTH", "MEDS_DEATH", "DRG", "OBSERVATION")},
}
_DEMOGRAPHIC_PREFIXES = {"GENDER": "gender", "SEX": "gender", "RACE": "race", "ETHNICITY": "ethnicity"}
_MISSING_UNITS = {"", "UNK", "UNKNOWN", "NONE", "NAN"}


def _prefix(code: str) -> str:
    return code.split("/", 1)[0]


def kind_of_code(code: str) -> EventKind:
    """The timeline kind of a MEDS code, from its vocabulary prefix (`LOINC/...`, `LAB//...`)."""
    prefix = _prefix(code).upper()
    if prefix in _KIND_BY_PREFIX:
        return _KIND_BY_PREFIX[prefix]
    # MIMIC-IV MEDS writes OMR vitals as bare names ("Blood Pressure", "BMI (kg/m2)").
    return EventKind.observation


def looks_like_meds(path: Path) -> bool:
    if not path.is_dir():
        return False
    data = path / "data"
    return data.is_dir() and (any(data.rglob("*.parquet")) or (path / "metadata" / "dataset.json").is_file())


def _float_text(value: float) -> str:
    """The shortest text that reads back as the same float32 (the MEDS value type): 98.6, not 98.59999847."""
    import numpy as np

    return np.format_float_positional(np.float32(value), trim="-", unique=True)


@dataclass(frozen=True)
class _Location:
    path: Path
    row_group: int
    first: int  # first row of the subject's run within the row group
    length: int


@register_source("meds", detect=looks_like_meds)
class MedsSource:
    """A MEDS dataset folder; reads one subject's row groups at a time."""

    CACHED_ROW_GROUPS = 2

    def __init__(self, path: str | os.PathLike) -> None:
        import meds
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.warnings = SourceWarnings()
        self._lock = threading.RLock()
        data = self.path / meds.data_subdirectory
        if not data.is_dir():
            raise MedalignError(f"MEDS folder has no {meds.data_subdirectory}/ folder", path=self.path)
        self.shards = sorted(p for p in data.rglob("*.parquet") if not p.name.startswith("."))
        if not self.shards:
            raise MedalignError("MEDS data folder holds no .parquet shards", path=data)
        self.metadata: dict = {}
        dataset_json = self.path / meds.dataset_metadata_filepath
        if dataset_json.is_file():
            try:
                self.metadata = json.loads(dataset_json.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise MedalignError(f"dataset.json is not valid JSON: {exc}", path=dataset_json) from None
        self._columns: dict[Path, list[str]] = {}
        for shard in self.shards:
            try:
                schema = pq.read_schema(shard)
            except Exception as exc:  # pyarrow raises several types for a broken file
                raise MedalignError(f"cannot read the parquet shard: {exc}", path=shard) from None
            try:
                meds.DataSchema.validate(schema)
            except Exception as exc:
                raise MedalignError(f"not a MEDS data shard: {exc}", path=shard) from None
            self._columns[shard] = schema.names
        self._names: dict[str, str] | None = None
        self._index: dict[str, list[_Location]] | None = None
        self._groups: dict[tuple[Path, int], Any] = {}

    # ------------------------------------------------------------------------------------------ metadata

    def _code_names(self) -> dict[str, str]:
        if self._names is None:
            import meds
            import pyarrow.parquet as pq

            names: dict[str, str] = {}
            codes = self.path / meds.code_metadata_filepath
            if codes.is_file():
                try:
                    schema = pq.read_schema(codes)
                    if "code" not in schema.names or "description" not in schema.names:
                        raise MedalignError("codes.parquet needs columns 'code' and 'description'", path=codes)
                    table = pq.read_table(codes, columns=["code", "description"])
                except MedalignError:
                    raise
                except Exception as exc:
                    raise MedalignError(f"cannot read codes.parquet: {exc}", path=codes) from None
                for code, description in zip(table.column("code").to_pylist(), table.column("description").to_pylist()):
                    if code and description:
                        names[code] = description
            self._names = names
        return self._names

    def vocabulary_terms(self) -> list:
        """codes.parquet descriptions (category: the code's vocabulary) and a `vocabulary/` folder beside `data/`."""
        from medalign_rag.records.source_vocabulary import VOCABULARY_DIRNAME, folder_terms
        from medalign_rag.retrieval.vocabulary import SourceTerm

        terms = [SourceTerm(description, (), _prefix(code)) for code, description in self._code_names().items()]
        return terms + folder_terms(self.path / VOCABULARY_DIRNAME)

    def _subject_index(self) -> dict[str, list[_Location]]:
        """subject id -> where its rows are: (shard, row group, first row, row count) per run of its rows.

        Built once from the `subject_id` column alone. MEDS shards are sorted by subject, so a subject's rows in
        a row group are one run and `load_record` slices them out of the group without scanning it.
        """
        with self._lock:
            if self._index is not None:
                return self._index
            import numpy as np
            import pyarrow.parquet as pq

            index: dict[str, list[_Location]] = {}
            for shard in self.shards:
                handle = pq.ParquetFile(shard)
                for group in range(handle.metadata.num_row_groups):
                    column = handle.read_row_group(group, columns=["subject_id"]).column(0)
                    if column.null_count:
                        self.warnings.add("rows without subject_id skipped", f"{shard.name} row group {group}")
                    values = column.to_numpy(zero_copy_only=False)
                    if len(values) == 0:
                        continue
                    # Start of every run of equal ids (a subject may have several runs if a shard is unsorted).
                    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
                    lengths = np.diff(np.append(starts, len(values)))
                    for first, length in zip(starts.tolist(), lengths.tolist()):
                        subject = values[first]
                        if subject != subject:  # NaN: a null id read through numpy
                            continue
                        index.setdefault(str(int(subject)), []).append(_Location(shard, group, first, length))
            self._index = index
            return self._index

    def _row_group(self, shard: Path, group: int):
        """One row group as an arrow table; the last few are kept, since consecutive subjects share groups."""
        import pyarrow.parquet as pq

        key = (shard, group)
        with self._lock:
            cached = self._groups.get(key)
        if cached is not None:
            return cached
        try:
            table = pq.ParquetFile(shard).read_row_group(group)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise MedalignError(f"cannot read the parquet shard: {exc}", path=shard) from None
        with self._lock:
            self._groups[key] = table
            while len(self._groups) > self.CACHED_ROW_GROUPS:
                self._groups.pop(next(iter(self._groups)))
        return table

    # ------------------------------------------------------------------------------------------ protocol

    def patient_ids(self) -> list[str]:
        ids = sorted(self._subject_index(), key=lambda v: (len(v), v))
        return [check_patient_id(pid, path=str(self.path)) for pid in ids]

    def instructions(self) -> list[Instruction]:
        return []

    def model_responses(self) -> list[ModelResponse]:
        return []

    def _rows(self, patient_id: str) -> list[dict[str, Any]]:
        check_patient_id(patient_id, path=str(self.path))
        locations = self._subject_index().get(patient_id)
        if locations is None:
            raise MedalignError(f"no MEDS subject {patient_id!r}", path=self.path)
        rows: list[dict[str, Any]] = []
        for location in locations:
            table = self._row_group(location.path, location.row_group).slice(location.first, location.length)
            # Column lists zipped into dicts: several times faster than Table.to_pylist for thousands of rows.
            names = table.column_names
            columns = [table.column(name).to_pylist() for name in names]
            shard = location.path.name
            for values in zip(*columns):
                row = dict(zip(names, values))
                row["_shard"] = shard
                rows.append(row)
        # MEDS shards are sorted by subject and time; sort anyway (static rows, with no time, first).
        rows.sort(key=lambda r: (r["time"] is not None, r["time"] or datetime.min, r["code"] or ""))
        return rows

    def fingerprint(self, patient_id: str) -> str:
        """sha256 of the subject's rows and of the code names (codes.parquet)."""
        digest = hashlib.sha256()
        for row in self._rows(patient_id):
            digest.update(repr(sorted((k, v) for k, v in row.items())).encode())
        digest.update(repr(sorted(self._code_names().items())).encode())
        return digest.hexdigest()

    def load_record(self, patient_id: str) -> PatientRecord:
        rows = self._rows(patient_id)
        names = self._code_names()
        demographic: dict[str, Any] = {}
        events: list[tuple[Event, str]] = []  # (event, raw code)
        # Codes repeat a lot (a few hundred distinct codes per patient, thousands of rows): work each out once.
        code_info: dict[str, tuple[EventKind, str, str | None, str | None, str]] = {}
        for position, row in enumerate(rows):
            code = row.get("code")
            if not code:
                self.warnings.add("MEDS row without a code skipped", f"{row['_shard']}: subject {patient_id}")
                continue
            info = code_info.get(code)
            if info is None:
                info = code_info[code] = self._code_info(code, names)
            kind, name, code_unit, vocab_code, prefix = info
            stamp = row.get("time")
            if stamp is None:
                field = _DEMOGRAPHIC_PREFIXES.get(prefix)
                if field:
                    demographic[field] = code.split("/")[-1] or row.get("text_value")
                else:
                    self.warnings.add("MEDS static row (no time) skipped",
                                      f"{row['_shard']}: subject {patient_id} code {code!r}")
                continue
            if code == "MEDS_BIRTH":
                demographic["birthdate"] = stamp
                continue
            if not isinstance(stamp, datetime) or not (1800 <= stamp.year <= 2300):
                self.warnings.add("MEDS row with a time out of range skipped",
                                  f"{row['_shard']}: subject {patient_id} code {code!r} time {stamp!r}")
                continue
            numeric = row.get("numeric_value")
            text_value = row.get("text_value")
            value = _float_text(numeric) if numeric is not None and numeric == numeric else None
            text = None
            if isinstance(text_value, str) and text_value.strip():
                if value is None and kind is not EventKind.note:
                    value = text_value
                else:
                    text = text_value
            unit = row.get("unit") or row.get("units") or code_unit
            # Every field is built here from typed parquet values, so pydantic's validation is skipped: it was
            # a third of the read time.
            events.append((
                Event.model_construct(event_id=f"{patient_id}-e{position:06d}", timestamp=stamp, kind=kind,
                                      source_type=None, code=vocab_code, name=name, value=value,
                                      unit=str(unit) if unit else None, text=text),
                code,
            ))
        demographics = Demographics(
            birthdate=demographic.get("birthdate"), gender=demographic.get("gender"),
            race=demographic.get("race"), ethnicity=demographic.get("ethnicity"),
        )
        encounters = self._visits(patient_id, events, rows)
        if not encounters:
            raise MedalignError(f"MEDS subject {patient_id!r} has no timed events", path=self.path)
        return PatientRecord(patient_id=patient_id, demographics=demographics, encounters=encounters)

    @staticmethod
    def _code_info(code: str, names: dict[str, str]) -> tuple[EventKind, str, str | None, str | None, str]:
        """(kind, name, unit written in the code, `VOCAB/CODE` form or None, upper-case prefix) of a code."""
        kind = kind_of_code(code)
        unit = None
        if "//" in code:
            parts = code.split("//")
            if len(parts) >= 3 and parts[-1].upper() not in _MISSING_UNITS and kind in (
                EventKind.measurement, EventKind.observation
            ):
                unit = parts[-1]
        name = names.get(code) or code.replace("//", " ").replace("_", " ").strip()
        vocab_code = code if "/" in code and "//" not in code else None
        return kind, name, unit, vocab_code, _prefix(code).upper()

    def _visits(self, patient_id: str, events: list[tuple[Event, str]], rows: list[dict]) -> list[Encounter]:
        """Visits from start/end code pairs and `Visit/` codes; every other event goes to its visit or its day."""
        spans: list[tuple[datetime, datetime, Encounter]] = []
        open_starts: dict[str, tuple[Event, str]] = {}
        end_of = {start: end for start, end in VISIT_CODE_PAIRS}
        start_of = {end: start for start, end in VISIT_CODE_PAIRS}
        last_time = max((ev.timestamp for ev, _ in events), default=None)

        def close(start_event: Event, code: str, end: datetime) -> None:
            kind = _prefix(code).split("//")[0]
            label = " ".join(part for part in code.split("//")[1:] if part and part.upper() != "UNK")
            encounter = Encounter(
                encounter_id=f"{patient_id}-visit-{len(spans):04d}",
                type=kind.replace("_", " ").lower() + (f" ({label})" if label else ""),
                start=start_event.timestamp, end=end,
            )
            spans.append((start_event.timestamp, end, encounter))

        for event, code in events:
            head = code.split("//")[0]
            if head in end_of:
                if head in open_starts:  # a second admission before a discharge: close the first at this time
                    close(*open_starts.pop(head), end=event.timestamp)
                open_starts[head] = (event, code)
            elif head in start_of and start_of[head] in open_starts:
                close(*open_starts.pop(start_of[head]), end=event.timestamp)
            elif code.startswith(_OPEN_VISIT_PREFIXES):
                day_end = datetime.combine(event.timestamp.date(), datetime.max.time()).replace(microsecond=0)
                close(event, code.replace("/", "//", 1) if "//" not in code else code, end=day_end)
        for head, (event, code) in open_starts.items():  # still admitted at the end of the record
            self.warnings.add("visit start without an end (runs to the last event)", f"subject {patient_id} {code}")
            close(event, code, end=last_time or event.timestamp)
        spans.sort(key=lambda span: (span[0], span[2].encounter_id))
        days: dict[date, Encounter] = {}
        for event, _ in events:
            # The latest-starting visit that contains the event (a nested ED stay wins over the admission).
            holder = None
            for start, end, encounter in spans:
                if start > event.timestamp:
                    break
                if event.timestamp <= end:
                    holder = encounter
            if holder is None:
                day = event.timestamp.date()
                holder = days.get(day)
                if holder is None:
                    holder = days[day] = Encounter(
                        encounter_id=f"{patient_id}-day-{day:%Y%m%d}", type="day without a visit",
                        start=datetime.combine(day, datetime.min.time()),
                    )
            holder.events.append(event)
        encounters = [encounter for _, _, encounter in spans if encounter.events] + list(days.values())
        for encounter in encounters:
            if encounter.end is None:
                encounter.end = max(ev.timestamp for ev in encounter.events)
        return sorted(encounters, key=lambda e: (e.start, e.encounter_id))
