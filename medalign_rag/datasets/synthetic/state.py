"""What the simulation knows: event and encounter drafts, the facts instructions are written from, and the
patient's current clinical state (read by physiology and note prose, changed only by care decisions)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime

from medalign_rag.datasets.synthetic.vocabulary import Acute, Drug
from medalign_rag.records.model import EventKind


@dataclass
class EventDraft:
    """An event before its id is known (ids follow record order, which is fixed once its encounter is done)."""

    timestamp: datetime
    kind: EventKind
    code: str | None = None
    name: str | None = None
    value: str | None = None
    unit: str | None = None
    text: str | None = None
    event_id: str = ""


@dataclass
class EncounterDraft:
    type: str
    start: datetime
    events: list[EventDraft] = field(default_factory=list)

    def add(self, timestamp: datetime, kind: EventKind, **fields: str | None) -> EventDraft:
        draft = EventDraft(timestamp=timestamp, kind=kind, **fields)
        self.events.append(draft)
        return draft


@dataclass
class Stop:
    """A medication stopped for a reason: the note that says so is the evidence."""

    ingredient: str
    when: datetime
    reason: str
    note: EventDraft | None = None
    support: list[EventDraft] = field(default_factory=list)


@dataclass
class Stay:
    """An emergency visit or an admission, with what a clinician's summary of it would say."""

    kind: str  # "emergency" | "admission"
    start: datetime
    end: datetime
    problem: Acute
    summary: str
    diagnosis: EventDraft
    note: EventDraft  # ED note or discharge summary


@dataclass
class OfficeFact:
    """An office visit with what a clinician's summary of it would say and its blood pressure readings."""

    start: datetime
    summary: str
    note: EventDraft
    sbp: EventDraft
    dbp: EventDraft


class PatientState:
    """The patient at the current point of the simulation.

    `Simulator` holds these attributes and changes them as it makes care decisions; `Physiology` and the note
    writers only read them. Conditions appear in two steps: a condition *shows* (in the physiology) once the record
    has progressed past its onset, and is *diagnosed* at the next visit that looks for it.
    """

    rng: random.Random
    patient_id: str
    female: bool
    birthdate: datetime
    start: datetime  # the record's first day
    pcp: str
    clinic: str
    target_tokens: int
    estimated_tokens: float
    onset: dict[str, float]  # condition key -> progress (0..1) at which it shows
    diagnosed: dict[str, datetime]
    traits: dict[str, bool]
    active: dict[str, Drug]  # ingredient -> current product
    acute: tuple[Acute, float] | None  # current acute problem and its severity
    bleed_at: datetime | None
    stays: list[Stay]

    @property
    def progress(self) -> float:
        return self.estimated_tokens / self.target_tokens

    def shows(self, key: str) -> bool:
        return key in self.diagnosed or (key in self.onset and self.progress >= self.onset[key])

    def age(self, when: datetime) -> int:
        return int((when - self.birthdate).days // 365.25)

    def years(self, when: datetime) -> float:
        return (when - self.start).days / 365.25
