"""What the server knows about the patients of a record source: ids, per-patient summaries, loaded records.

Records are cached by their source fingerprint, so a changed file is re-read and an unchanged one never is.
Everything here is safe to call from the server's worker threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medalign_rag.records.model import PatientRecord, check_patient_id
from medalign_rag.records.serialize import render_record
from medalign_rag.tokenization import TokenCounter

# An unknown id re-lists the source at most this often: a client cannot make every request list a big folder.
RELIST_INTERVAL_S = 2.0


class PatientNotFound(LookupError):
    """The id is well formed but the source has no such patient (the API answers 404)."""


@dataclass(frozen=True)
class PatientSummary:
    patient_id: str
    encounters: int
    events: int
    notes: int
    tokens: int
    first: str | None
    last: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PatientCatalog:
    def __init__(self, source, counter: TokenCounter, *, record_cache_size: int = 8,
                 is_indexed: Callable[[str], bool] | None = None) -> None:
        self.source = source
        self.counter = counter
        self._is_indexed = is_indexed
        self._cache_size = record_cache_size
        self._lock = threading.Lock()
        self._ids: tuple[str, ...] = ()
        self._id_set: frozenset[str] = frozenset()
        self._listed_at = float("-inf")
        self._records: OrderedDict[str, tuple[str, PatientRecord]] = OrderedDict()
        self._summaries: dict[str, tuple[str, PatientSummary]] = {}
        self._event_encounters: dict[str, tuple[str, dict[str, str]]] = {}

    # -- ids ----------------------------------------------------------------------------------------

    def patient_ids(self) -> tuple[str, ...]:
        if not self._ids:
            self._relist(force=True)
        return self._ids

    def _relist(self, *, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._listed_at < RELIST_INTERVAL_S:
                return
            ids = tuple(self.source.patient_ids())
            self._ids, self._id_set, self._listed_at = ids, frozenset(ids), time.monotonic()

    def require(self, patient_id: str) -> str:
        """`patient_id` if it is safe (MedalignError otherwise, as the CLI says) and the source has it."""
        check_patient_id(patient_id)
        self.patient_ids()
        if patient_id not in self._id_set:
            self._relist()
            if patient_id not in self._id_set:
                raise PatientNotFound(patient_id)
        return patient_id

    # -- records and summaries ----------------------------------------------------------------------

    def record(self, patient_id: str) -> PatientRecord:
        fingerprint = self.source.fingerprint(patient_id)
        with self._lock:
            cached = self._records.get(patient_id)
            if cached is not None and cached[0] == fingerprint:
                self._records.move_to_end(patient_id)
                return cached[1]
        record = self.source.load_record(patient_id)
        with self._lock:
            self._records[patient_id] = (fingerprint, record)
            self._records.move_to_end(patient_id)
            while len(self._records) > self._cache_size:
                self._records.popitem(last=False)
        return record

    def summary(self, patient_id: str) -> PatientSummary:
        fingerprint = self.source.fingerprint(patient_id)
        with self._lock:
            cached = self._summaries.get(patient_id)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        record = self.record(patient_id)
        summary = PatientSummary(
            patient_id=patient_id,
            encounters=len(record.encounters),
            events=record.n_events,
            notes=record.n_notes,
            # The same count `inspect` shows: the whole record serialized, in the answering model's tokens.
            tokens=self.counter.count(render_record(record, include_ids=False)),
            first=record.encounters[0].start.date().isoformat() if record.encounters else None,
            last=record.last_timestamp.date().isoformat() if record.last_timestamp else None,
        )
        with self._lock:
            self._summaries[patient_id] = (fingerprint, summary)
        return summary

    def events_by_encounter(self, patient_id: str, event_ids: list[str]) -> dict[str, list[str]]:
        """`event_ids` grouped by the encounter holding them (record order kept), so the page can open exactly
        the encounters an answer cites and mark the cited events."""
        fingerprint = self.source.fingerprint(patient_id)
        with self._lock:
            cached = self._event_encounters.get(patient_id)
        if cached is None or cached[0] != fingerprint:
            record = self.record(patient_id)
            mapping = {event.event_id: encounter.encounter_id for encounter, event in record.iter_events()}
            cached = (fingerprint, mapping)
            with self._lock:
                self._event_encounters[patient_id] = cached
                while len(self._event_encounters) > self._cache_size:
                    self._event_encounters.pop(next(iter(self._event_encounters)))
        grouped: dict[str, list[str]] = {}
        for event_id in event_ids:
            encounter_id = cached[1].get(event_id)
            if encounter_id is not None:
                grouped.setdefault(encounter_id, []).append(event_id)
        return grouped

    def indexed(self, patient_id: str) -> bool | None:
        if self._is_indexed is None:
            return None
        try:
            return bool(self._is_indexed(patient_id))
        except Exception:  # an unreadable manifest is "not indexed", not a failed listing
            return False
