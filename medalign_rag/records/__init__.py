"""Records stage: the EHR timeline model and MedAlign's XML and TSV formats."""

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

__all__ = [
    "Demographics",
    "Encounter",
    "Event",
    "EventKind",
    "Instruction",
    "ModelResponse",
    "PatientRecord",
    "check_patient_id",
]
