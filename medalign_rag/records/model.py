"""The EHR timeline every stage passes around: patient -> encounters -> events, plus instructions."""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Annotated, Iterator

from pydantic import AfterValidator, BaseModel, Field, field_validator

from medalign_rag.dates import naive_local
from medalign_rag.errors import MedalignError

# Patient ids end up in file names (ehrs/<id>.xml, indexes/<id>/); anything else could escape the folder.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


# Every timestamp a record or an instruction holds, whichever reader or caller made it, passes through here: a value
# with a UTC offset keeps its wall-clock reading and drops the offset (medalign_rag.dates.naive_local), so any two
# timestamps compare without "can't compare offset-naive and offset-aware datetimes".
LocalTimestamp = Annotated[datetime, AfterValidator(naive_local)]


def check_patient_id(patient_id: str, *, path: str | None = None) -> str:
    """Return `patient_id` if it is safe to use as a file name, else raise MedalignError."""
    if not isinstance(patient_id, str) or not _SAFE_ID.match(patient_id) or ".." in patient_id:
        raise MedalignError(
            f"patient id {patient_id!r} is not allowed: use letters, digits, '_', '-', '.' (no '..', no '/')",
            path=path,
        )
    return patient_id


class EventKind(str, Enum):
    condition = "condition"
    measurement = "measurement"
    drug = "drug"
    procedure = "procedure"
    observation = "observation"
    note = "note"
    visit = "visit"
    other = "other"


# OMOP CDM table names (as used by MedAlign's XML) <-> our kinds. The first name per kind is what we write.
OMOP_TABLE_BY_KIND: dict[EventKind, str] = {
    EventKind.condition: "condition_occurrence",
    EventKind.measurement: "measurement",
    EventKind.drug: "drug_exposure",
    EventKind.procedure: "procedure_occurrence",
    EventKind.observation: "observation",
    EventKind.note: "note",
    EventKind.visit: "visit_occurrence",
    EventKind.other: "other",
}
KIND_BY_SOURCE_TYPE: dict[str, EventKind] = {
    "condition_occurrence": EventKind.condition,
    "condition": EventKind.condition,
    "measurement": EventKind.measurement,
    "drug_exposure": EventKind.drug,
    "drug": EventKind.drug,
    "procedure_occurrence": EventKind.procedure,
    "procedure": EventKind.procedure,
    "observation": EventKind.observation,
    "note": EventKind.note,
    "visit_occurrence": EventKind.visit,
    "visit_detail": EventKind.visit,
    "visit": EventKind.visit,
}


def kind_from_source_type(source_type: str) -> EventKind:
    return KIND_BY_SOURCE_TYPE.get(source_type.strip().lower(), EventKind.other)


class Event(BaseModel):
    """One clinical fact. `event_id` is stable across reads: gold evidence points at it."""

    event_id: str
    timestamp: LocalTimestamp
    kind: EventKind
    source_type: str | None = None  # the raw element/type name when it is not the canonical one for `kind`
    code: str | None = None  # "VOCAB/CODE", e.g. "LOINC/4548-4"
    name: str | None = None
    value: str | None = None
    unit: str | None = None
    text: str | None = None  # note body or other free text


class Encounter(BaseModel):
    encounter_id: str
    type: str = "encounter"
    start: LocalTimestamp
    end: LocalTimestamp | None = None
    events: list[Event] = Field(default_factory=list)


class Demographics(BaseModel):
    birthdate: LocalTimestamp | None = None
    gender: str | None = None
    race: str | None = None
    ethnicity: str | None = None


class PatientRecord(BaseModel):
    patient_id: str
    demographics: Demographics = Field(default_factory=Demographics)
    encounters: list[Encounter] = Field(default_factory=list)

    @field_validator("patient_id")
    @classmethod
    def _safe_patient_id(cls, value: str) -> str:
        return check_patient_id(value)

    def iter_events(self) -> Iterator[tuple[Encounter, Event]]:
        for encounter in self.encounters:
            for event in encounter.events:
                yield encounter, event

    @property
    def n_events(self) -> int:
        return sum(len(e.events) for e in self.encounters)

    @property
    def n_notes(self) -> int:
        return sum(1 for _, ev in self.iter_events() if ev.kind == EventKind.note)

    @property
    def last_timestamp(self) -> datetime | None:
        stamps = [ev.timestamp for _, ev in self.iter_events()] + [e.start for e in self.encounters]
        return max(stamps) if stamps else None


class Instruction(BaseModel):
    """A clinician's instruction about one patient, with what is known of its answer."""

    instruction_id: str
    patient_id: str
    question: str
    reference_answers: list[str] = Field(default_factory=list)
    time_anchor: LocalTimestamp | None = None
    evidence_event_ids: list[str] = Field(default_factory=list)
    category: str | None = None
    # Dataset-specific extras (e.g. FHIR-AgentBench's raw true_answer rows, task template); JSON-safe values only.
    metadata: dict = Field(default_factory=dict)


class ModelResponse(BaseModel):
    """One row of clinician-reviewed-model-responses.tsv: a model's answer and the clinician's judgement of it."""

    instruction_id: str
    patient_id: str
    question: str
    model_name: str
    response: str
    rank: float | None = None  # 1 = best; ties allowed
    binary_correct: bool | None = None
    clinician_response: str | None = None
