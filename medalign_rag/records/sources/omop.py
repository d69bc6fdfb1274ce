"""OMOP CDM 5.3 / 5.4 records from a DuckDB file or a folder of CSV / parquet tables, queried with duckdb.

    person                 demographics (gender, race, ethnicity names from `concept`)
    visit_occurrence       one encounter per visit (`visit-<id>`) and its visit event (same id)
    condition_occurrence   condition events (`cond-<id>`)
    drug_exposure          drug events (`drug-<id>`): quantity, sig, route, days supply as text
    procedure_occurrence   procedure events (`proc-<id>`)
    measurement            measurement events (`meas-<id>`): value as number or concept, unit
    observation            observation events (`obs-<id>`)
    note                   note events (`note-<id>`), when present

Only `person` and `concept` are required. Names come from `concept` (`VOCABULARY/CODE` codes); a concept id that
`concept` lacks keeps its id as the code (`OMOP/<id>`) and is named as unknown (counted, not an error). A clinical
table that lacks a column we need is skipped with a counted warning (Eunomia's GiBleed ships a placeholder `note`
table); a missing column of `person` or `concept` is an error. Events without a visit, or whose visit is missing,
are grouped per calendar day. Patients are read lazily, a block of consecutive persons at a time, from per-table
person partitions (sorted temporary tables with concept names joined, built on first use; see `_partition_rows`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable

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

__all__ = ["OmopSource", "looks_like_omop", "OMOP_TABLES"]

_DUCKDB_SUFFIXES = (".duckdb", ".ddb", ".db")
_TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".tsv")


@dataclass(frozen=True)
class _Table:
    """How one clinical table becomes events."""

    name: str
    kind: EventKind
    prefix: str  # event id prefix
    id_column: str
    concept_column: str
    time_columns: tuple[str, ...]  # first non-null wins (datetime before date)
    source_column: str | None
    # Columns whose concept ids are named too (value, unit, route, ...), and plain columns read as they are.
    named_concepts: tuple[str, ...] = ()
    plain: tuple[str, ...] = ()


OMOP_TABLES: tuple[_Table, ...] = (
    _Table("condition_occurrence", EventKind.condition, "cond", "condition_occurrence_id", "condition_concept_id",
           ("condition_start_datetime", "condition_start_date"), "condition_source_value",
           plain=("condition_end_date", "stop_reason")),
    _Table("drug_exposure", EventKind.drug, "drug", "drug_exposure_id", "drug_concept_id",
           ("drug_exposure_start_datetime", "drug_exposure_start_date"), "drug_source_value",
           named_concepts=("route_concept_id",),
           plain=("drug_exposure_end_date", "quantity", "days_supply", "sig", "dose_unit_source_value")),
    _Table("procedure_occurrence", EventKind.procedure, "proc", "procedure_occurrence_id", "procedure_concept_id",
           ("procedure_datetime", "procedure_date"), "procedure_source_value"),
    _Table("measurement", EventKind.measurement, "meas", "measurement_id", "measurement_concept_id",
           ("measurement_datetime", "measurement_date"), "measurement_source_value",
           named_concepts=("value_as_concept_id", "unit_concept_id", "operator_concept_id"),
           plain=("value_as_number", "unit_source_value", "range_low", "range_high")),
    _Table("observation", EventKind.observation, "obs", "observation_id", "observation_concept_id",
           ("observation_datetime", "observation_date"), "observation_source_value",
           named_concepts=("value_as_concept_id", "unit_concept_id"),
           plain=("value_as_number", "value_as_string", "unit_source_value")),
    _Table("note", EventKind.note, "note", "note_id", "note_type_concept_id",
           ("note_datetime", "note_date"), None, plain=("note_title", "note_text")),
)
_VISIT_COLUMNS = ("visit_occurrence_id", "visit_concept_id", "visit_start_datetime", "visit_start_date",
                  "visit_end_datetime", "visit_end_date")
# Optional visit columns: 5.3 names, then 5.4 names.
_VISIT_NAMED = ("discharge_to_concept_id", "discharged_to_concept_id", "admitting_source_concept_id",
                "admitted_from_concept_id")
_NUMERIC_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                  "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE"}
_PERSON_REQUIRED = ("person_id", "gender_concept_id", "year_of_birth", "race_concept_id", "ethnicity_concept_id")
_CONCEPT_REQUIRED = ("concept_id", "concept_name", "vocabulary_id", "concept_code")


def _table_files(folder: Path) -> dict[str, Path]:
    """table name (lower case) -> its CSV/parquet file or folder of parquet parts."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = path.name.lower()
        if path.is_dir() and any(path.glob("*.parquet")):
            found.setdefault(name, path)
            continue
        for suffix in _TABLE_SUFFIXES:
            if path.is_file() and name.endswith(suffix):
                found.setdefault(name[: -len(suffix)], path)
    return found


def looks_like_omop(path: Path) -> bool:
    """A DuckDB file, or a folder with a `person` table and a `concept` table as CSV/parquet."""
    if path.is_file():
        return path.suffix.lower() in _DUCKDB_SUFFIXES
    if not path.is_dir():
        return False
    tables = _table_files(path)
    return "person" in tables and ("concept" in tables or "visit_occurrence" in tables)


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime.combine(value, datetime.min.time())
    if isinstance(value, str) and value.strip():
        try:
            return datetime.fromisoformat(value.strip()).replace(tzinfo=None)
        except ValueError:
            return None
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return text or None


def _row_id(value: Any) -> str | None:
    """Ids stored as DOUBLE (Eunomia's measurement_id) read as integers."""
    return _text(value)


@register_source("omop", detect=looks_like_omop)
class OmopSource:
    """An OMOP CDM database; one duckdb connection, used under a lock (duckdb connections are not thread-safe)."""

    # duckdb's memory for this source (person partitions, sorts, pages read); beyond it duckdb spills to disk.
    # On GiBleed copied 20 times (53,880 persons, 4.3M clinical rows), reading 60 blocks: peak RSS 819 MB with
    # duckdb's default (80% of RAM), 349 MB at 256MB, for 80 vs 90 ms per block.
    MEMORY_LIMIT = "256MB"

    def __init__(self, path: str | os.PathLike) -> None:
        import duckdb  # imported here: only OMOP users need it

        self.path = Path(path)
        self.warnings = SourceWarnings()
        self._lock = threading.Lock()
        # Where the person partitions spill when they outgrow memory (removed with this object).
        self._spill = tempfile.TemporaryDirectory(prefix="medalign-rag-omop-")
        try:
            if self.path.is_file():
                self._db = duckdb.connect(str(self.path), read_only=True)
            else:
                self._db = duckdb.connect()
                for table, file in _table_files(self.path).items():
                    self._db.execute(f'CREATE VIEW "{table}" AS SELECT * FROM {_reader(file)}')
            self._db.execute("SET temp_directory = ?", [self._spill.name])
            # duckdb would otherwise cache up to 80% of the machine's memory; past this it spills to `_spill`.
            self._db.execute("SET memory_limit = ?", [self.MEMORY_LIMIT])
        except duckdb.Error as exc:
            raise MedalignError(f"cannot open the OMOP database: {str(exc).splitlines()[0]}", path=self.path) from None
        self._columns = self._schema()
        for table, required in (("person", _PERSON_REQUIRED), ("concept", _CONCEPT_REQUIRED)):
            if table not in self._columns:
                raise MedalignError(f"OMOP table {table!r} is missing", path=self.path)
            missing = [c for c in required if c not in self._columns[table]]
            if missing:
                raise MedalignError(f"OMOP table {table!r} lacks column(s) {', '.join(missing)}", path=self.path)
        self._tables = []
        for table in OMOP_TABLES:
            columns = self._columns.get(table.name)
            if columns is None:
                continue
            needed = [table.id_column, "person_id", table.concept_column, table.time_columns[-1]]
            missing = [c for c in needed if c not in columns]
            if missing:
                self.warnings.add(f"OMOP table {table.name} lacks {', '.join(missing)}; table skipped",
                                  str(self.path))
                continue
            self._tables.append(table)
        self._has_visits = "visit_occurrence" in self._columns and all(
            c in self._columns["visit_occurrence"] for c in ("visit_occurrence_id", "person_id", "visit_start_date")
        )
        self._ids: list[str] | None = None
        self._block: dict[str, dict[str, list[tuple]]] = {}
        self._partitions: dict[str, bool] = {}  # table -> its person partition exists (value: person_id is numeric)

    def _schema(self) -> dict[str, set[str]]:
        rows = self._db.execute(
            "SELECT lower(table_name), lower(column_name) FROM information_schema.columns"
        ).fetchall()
        columns: dict[str, set[str]] = {}
        for table, column in rows:
            columns.setdefault(table, set()).add(column)
        return columns

    def _query(self, sql: str, parameters: list | None = None) -> list[tuple]:
        import duckdb

        with self._lock:
            try:
                return self._db.execute(sql, parameters or []).fetchall()
            except duckdb.Error as exc:
                raise MedalignError(f"OMOP query failed: {str(exc).splitlines()[0]}", path=self.path) from None

    def _column(self, table: str, column: str, alias: str = "t") -> str:
        """`alias.column`, or NULL when the table lacks it (optional columns differ between CDM versions)."""
        return f"{alias}.{column}" if column in self._columns.get(table, ()) else "NULL"

    # ----------------------------------------------------------------------------------------- protocol

    def patient_ids(self) -> list[str]:
        if self._ids is None:
            rows = self._query("SELECT DISTINCT person_id FROM person WHERE person_id IS NOT NULL")
            ids = sorted({_row_id(row[0]) for row in rows if _row_id(row[0]) is not None},
                         key=lambda v: (len(v), v))
            self._ids = [check_patient_id(pid, path=f"{self.path}: person") for pid in ids]
        return list(self._ids)

    def instructions(self) -> list[Instruction]:
        return []

    def model_responses(self) -> list[ModelResponse]:
        return []

    def vocabulary_terms(self) -> list:
        """`concept_synonym` joined to `concept`: each concept's synonyms as its other names ([] without it)."""
        from medalign_rag.retrieval.vocabulary import SourceTerm

        if not {"concept_id", "concept_synonym_name"} <= self._columns.get("concept_synonym", set()):
            return []
        rows = self._query("SELECT c.concept_name, s.concept_synonym_name, " + self._column("concept", "domain_id", "c")
                           + " FROM concept_synonym s JOIN concept c ON c.concept_id = s.concept_id"
                           " WHERE s.concept_synonym_name IS NOT NULL AND c.concept_name IS NOT NULL")
        synonyms: dict[str, list[str]] = {}
        domains: dict[str, str] = {}
        for name, synonym, domain in rows:
            if str(synonym) != str(name):
                synonyms.setdefault(str(name), []).append(str(synonym))
                domains[str(name)] = str(domain or "")
        return [SourceTerm(name, tuple(dict.fromkeys(found)), domains[name]) for name, found in synonyms.items()]

    def fingerprint(self, patient_id: str) -> str:
        """sha256 of every row the patient's record is made from (with their concept names)."""
        digest = hashlib.sha256()
        for name, rows in self._patient_rows(patient_id).items():
            digest.update(name.encode() + b"\0" + repr(rows).encode())
        return digest.hexdigest()

    def load_record(self, patient_id: str) -> PatientRecord:
        return self._record(patient_id, self._patient_rows(patient_id))

    # ----------------------------------------------------------------------------------------- reading

    # Patients are read in blocks of this many (consecutive in patient_ids() order), one query per table per block:
    # a query per patient and table costs duckdb ~10 ms of planning, a block costs about the same.
    BLOCK_SIZE = 128

    def _patient_rows(self, patient_id: str) -> dict[str, list[tuple]]:
        check_patient_id(patient_id, path=str(self.path))
        with self._lock:
            cached = self._block.get(patient_id)
        if cached is not None:
            return cached
        ids = self.patient_ids()
        try:
            position = ids.index(patient_id)
        except ValueError:
            raise MedalignError(f"no OMOP person {patient_id!r}", path=self.path) from None
        start = position - position % self.BLOCK_SIZE
        block_ids = ids[start: start + self.BLOCK_SIZE]
        block = self._read_block(block_ids)
        with self._lock:
            self._block = block
        return block[patient_id]

    def _read_block(self, block_ids: list[str]) -> dict[str, dict[str, list[tuple]]]:
        keys = [int(pid) if pid.isdigit() else pid for pid in block_ids]
        by_patient: dict[str, dict[str, list[tuple]]] = {pid: {} for pid in block_ids}

        def fetch(name: str, columns: list[str], source: str, order: str) -> None:
            for pid in block_ids:
                by_patient[pid][name] = []
            for row in self._partition_rows(name, columns, source, order, keys):
                pid = _row_id(row[0])
                if pid in by_patient:
                    by_patient[pid][name].append(row[1:])

        fetch("person", ["p.person_id", "p.year_of_birth", self._column("person", "month_of_birth", "p"),
                         self._column("person", "day_of_birth", "p"), self._column("person", "birth_datetime", "p"),
                         "g.concept_name", "r.concept_name", "e.concept_name",
                         self._column("person", "gender_source_value", "p"),
                         self._column("person", "race_source_value", "p"),
                         self._column("person", "ethnicity_source_value", "p")],
              """person p
                LEFT JOIN concept g ON g.concept_id = NULLIF(p.gender_concept_id, 0)
                LEFT JOIN concept r ON r.concept_id = NULLIF(p.race_concept_id, 0)
                LEFT JOIN concept e ON e.concept_id = NULLIF(p.ethnicity_concept_id, 0)""", "ALL")
        if self._has_visits:
            v = "visit_occurrence"
            named = [c for c in _VISIT_NAMED if c in self._columns[v]]
            joins = "".join(f" LEFT JOIN concept n{i} ON n{i}.concept_id = NULLIF(t.{c}, 0)" for i, c in enumerate(named))
            fetch(v, ["t.person_id", "t.visit_occurrence_id", "t.visit_concept_id", "c.concept_name", "c.vocabulary_id",
                      "c.concept_code", self._column(v, "visit_start_datetime"), "t.visit_start_date",
                      self._column(v, "visit_end_datetime"), self._column(v, "visit_end_date"),
                      *(f"n{i}.concept_name" for i in range(len(named)))],
                  f"visit_occurrence t LEFT JOIN concept c ON c.concept_id = t.visit_concept_id{joins}",
                  "c0, c7, c1")  # person, visit_start_date, visit_occurrence_id
        for table in self._tables:
            n = table.name
            joins = "".join(
                f" LEFT JOIN concept n{i} ON n{i}.concept_id = NULLIF({self._column(n, c)}, 0)"
                for i, c in enumerate(table.named_concepts)
            )
            fetch(n, ["t.person_id", f"t.{table.id_column}", f"t.{table.concept_column}", "c.concept_name",
                      "c.vocabulary_id", "c.concept_code", self._column(n, "visit_occurrence_id"),
                      self._column(n, table.source_column) if table.source_column else "NULL",
                      *(self._column(n, c) for c in table.time_columns),
                      *(f"n{i}.concept_name" for i in range(len(table.named_concepts))),
                      *(self._column(n, c) for c in table.plain)],
                  f"{n} t LEFT JOIN concept c ON c.concept_id = t.{table.concept_column}{joins}", "ALL")
        return by_patient

    def _partition_rows(self, name: str, columns: list[str], source: str, order: str, keys: list) -> list[tuple]:
        """The rows of `keys`' persons from one table, read from its person partition.

        A partition is the table's columns we read, with their concept names joined once, sorted by person_id
        into a temporary duckdb table on first use. A block's query then reads only the row groups that hold its
        persons (duckdb keeps min/max per row group) instead of scanning and joining the whole table again for
        every block. Temporary tables live in duckdb's buffer pool, which spills to a private temporary folder,
        so a database larger than memory still reads.
        """
        partition = f"_medalign_rag_{name}"
        numeric = self._partitions.get(name)
        if numeric is None:
            selected = ", ".join(f"{column} AS c{i}" for i, column in enumerate(columns))
            self._query(f'CREATE TEMP TABLE "{partition}" AS SELECT {selected} FROM {source} ORDER BY c0')
            kind = self._query(f'SELECT typeof(c0) FROM "{partition}" WHERE c0 IS NOT NULL LIMIT 1')
            numeric = bool(kind) and (kind[0][0] in _NUMERIC_TYPES or kind[0][0].startswith("DECIMAL"))
            self._partitions[name] = numeric
        marks = ", ".join("?" for _ in keys)
        if numeric and all(isinstance(key, int) for key in keys):
            # The range lets duckdb skip row groups; the IN list keeps the exact persons.
            return self._query(f'SELECT * FROM "{partition}" WHERE c0 BETWEEN ? AND ? AND c0 IN ({marks}) '
                               f"ORDER BY {order}", [min(keys), max(keys), *keys])
        return self._query(f'SELECT * FROM "{partition}" WHERE c0 IN ({marks}) ORDER BY {order}', keys)

    def _concept(self, table: str, concept_id: Any, name: Any, vocabulary: Any, code: Any,
                 source_value: Any, where: str | Callable[[], str]) -> tuple[str | None, str | None]:
        """(code, name) of a concept; an id missing from `concept` stays as `OMOP/<id>`, named as unknown.
        `where` (the row, for the warning) may be a function, so that it is only formatted when needed."""
        if name is not None:
            return (f"{vocabulary}/{code}" if vocabulary and code else None), str(name)
        source = _text(source_value)
        concept = _text(concept_id)
        if concept in (None, "0"):
            # Concept 0 is OMOP's "no matching concept": the source value is all there is.
            return None, source or "unmapped"
        self.warnings.add(f"{table}: concept id missing from the concept table (kept as unknown)",
                          f"{where() if callable(where) else where} concept {concept}")
        return f"OMOP/{concept}", f"unknown concept {concept}" + (f" ({source})" if source else "")

    def _record(self, patient_id: str, rows: dict[str, list[tuple]]) -> PatientRecord:
        where_base = f"{self.path.name}"
        year, month, day, birth_dt, gender, race, ethnicity, gender_src, race_src, eth_src = rows["person"][0]
        birth = _timestamp(birth_dt)
        if birth is None and _text(year) is not None:
            try:
                birth = datetime(int(float(year)), int(float(month or 1)), int(float(day or 1)))
            except (TypeError, ValueError):
                self.warnings.add("person: bad birth date", f"{where_base}: person {patient_id}")
        demographics = Demographics(
            birthdate=birth, gender=_text(gender) or _text(gender_src), race=_text(race) or _text(race_src),
            ethnicity=_text(ethnicity) or _text(eth_src),
        )
        encounters: dict[str, Encounter] = {}
        for row in rows.get("visit_occurrence", []):
            visit_id, concept_id, name, vocabulary, code, start_dt, start_d, end_dt, end_d, *extra = row
            where = f"{where_base}: visit_occurrence {_row_id(visit_id)}"
            start = _timestamp(start_dt) or _timestamp(start_d)
            if start is None or _row_id(visit_id) is None:
                self.warnings.add("visit_occurrence: row without id or start date skipped", where)
                continue
            end = _timestamp(end_dt) or _timestamp(end_d)
            code, name = self._concept("visit_occurrence", concept_id, name, vocabulary, code, None, where)
            encounter_id = f"visit-{_row_id(visit_id)}"
            if encounter_id in encounters:
                self.warnings.add("visit_occurrence: duplicate id skipped", where)
                continue
            details = [text for text in (_text(v) for v in extra) if text]
            encounters[encounter_id] = Encounter(
                encounter_id=encounter_id, type=name or "visit", start=start, end=end,
                events=[Event(event_id=encounter_id, timestamp=start, kind=EventKind.visit, code=code, name=name,
                              text="; ".join(details) or None)],
            )
        day_encounters: dict[date, Encounter] = {}
        seen: set[str] = set()
        warn = self.warnings.add
        # Per row, each id is turned into text once and the row's "where" (for warnings) is only built on a
        # warning: at ~80 rows per patient these small costs were most of the read (profiled on GiBleed).
        for table in self._tables:
            n_times = len(table.time_columns)
            n_named = len(table.named_concepts)
            missing_visit = f"{table.name}: visit_occurrence_id not found (event placed by its day)"
            for row in rows.get(table.name, ()):
                row_id = _row_id(row[0])
                if row_id is None:
                    warn(f"{table.name}: row without an id skipped", f"{where_base}: {table.name} None")
                    continue
                event_id = f"{table.prefix}-{row_id}"
                if event_id in seen:
                    # Ids must be unique per table; keep the row under a made-up id rather than lose it.
                    warn(f"{table.name}: duplicate id (kept as <id>-dup<n>)", f"{where_base}: {table.name} {row_id}")
                    copy = 2
                    while f"{event_id}-dup{copy}" in seen:
                        copy += 1
                    event_id = f"{event_id}-dup{copy}"
                seen.add(event_id)
                stamp = None
                for value in row[7:7 + n_times]:
                    stamp = _timestamp(value)
                    if stamp is not None:
                        break
                if stamp is None:
                    warn(f"{table.name}: row without a date skipped", f"{where_base}: {table.name} {row_id}")
                    continue
                rest = row[7 + n_times:]
                event = self._event(table, event_id, stamp, row, rest[:n_named], rest[n_named:],
                                    f"{where_base}: {table.name}", row_id)
                visit_id = _row_id(row[5])
                encounter = encounters.get(f"visit-{visit_id}") if visit_id else None
                if encounter is None:
                    if visit_id not in (None, "0"):
                        warn(missing_visit, f"{where_base}: {table.name} {row_id}")
                    encounter = day_encounters.get(stamp.date())
                    if encounter is None:
                        encounter = day_encounters[stamp.date()] = Encounter(
                            encounter_id=f"{patient_id}-day-{stamp:%Y%m%d}", type="day without a visit",
                            start=datetime.combine(stamp.date(), datetime.min.time()),
                        )
                encounter.events.append(event)
        ordered = sorted([*encounters.values(), *day_encounters.values()], key=lambda e: (e.start, e.encounter_id))
        for encounter in ordered:
            encounter.events.sort(key=lambda ev: ev.timestamp)
            if encounter.end is None and encounter.events:
                encounter.end = max(ev.timestamp for ev in encounter.events)
        if not ordered:
            raise MedalignError(f"OMOP person {patient_id!r} has no visits or dated clinical rows", path=self.path)
        return PatientRecord(patient_id=patient_id, demographics=demographics, encounters=ordered)

    def _event(self, table: _Table, event_id: str, stamp: datetime, row: tuple, named_values: tuple,
               plain_values: tuple, where_table: str, row_id: str) -> Event:
        """One clinical row as an event: `row` starts (id, concept id, name, vocabulary, code, visit, source)."""
        _, concept_id, name, vocabulary, code, _, source_value = row[:7]
        named = dict(zip(table.named_concepts, named_values))
        plain = dict(zip(table.plain, plain_values))
        if table.kind is EventKind.note:
            type_name = _text(name)
            title = _text(plain.get("note_title"))
            return Event(event_id=event_id, timestamp=stamp, kind=EventKind.note, name=title or type_name,
                         text=_text(plain.get("note_text")))
        code, name = self._concept(table.name, concept_id, name, vocabulary, code, source_value,
                                   lambda: f"{where_table} {row_id}")
        value = unit = text = None
        if table.kind in (EventKind.measurement, EventKind.observation):
            value = _text(plain.get("value_as_number"))
            if value is not None:
                operator = _text(named.get("operator_concept_id"))
                if operator in ("<", ">", "<=", ">="):
                    value = f"{named['operator_concept_id']}{value}"
            value = value or _text(plain.get("value_as_string")) or _text(named.get("value_as_concept_id"))
            unit = _text(named.get("unit_concept_id")) or _text(plain.get("unit_source_value"))
            low, high = _text(plain.get("range_low")), _text(plain.get("range_high"))
            if low or high:
                text = f"normal range {low or ''}-{high or ''}"
        elif table.kind is EventKind.drug:
            quantity, days = _text(plain.get("quantity")), _text(plain.get("days_supply"))
            parts = [
                f"quantity {quantity}" if quantity else None,
                f"{days} days" if days not in (None, "0") else None,
                _text(named.get("route_concept_id")),
                _text(plain.get("sig")),
            ]
            text = "; ".join(p for p in parts if p) or None
        elif table.kind is EventKind.condition:
            stop_reason = _text(plain.get("stop_reason"))
            if stop_reason:
                text = f"stop reason: {stop_reason}"
        return Event(event_id=event_id, timestamp=stamp, kind=table.kind, code=code, name=name, value=value,
                     unit=unit, text=text)


def _reader(file: Path) -> str:
    quoted = str(file).replace("'", "''")
    if file.is_dir():
        return f"read_parquet('{quoted}/*.parquet')"
    if file.name.lower().endswith(".parquet"):
        return f"read_parquet('{quoted}')"
    separator = "\\t" if file.name.lower().endswith(".tsv") else ","
    return f"read_csv('{quoted}', header=true, delim=E'{separator}', sample_size=-1)"
