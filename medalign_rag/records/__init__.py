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
from medalign_rag.records.readers import read_record
from medalign_rag.records.instructions import (
    read_instruction_table,
    read_model_responses,
    write_instruction_table,
)
from medalign_rag.records.dataset import DataFolder, open_data_folder

__all__ = [
    "DataFolder",
    "Demographics",
    "Encounter",
    "Event",
    "EventKind",
    "Instruction",
    "ModelResponse",
    "PatientRecord",
    "check_patient_id",
    "open_data_folder",
    "read_instruction_table",
    "read_model_responses",
    "read_record",
    "write_instruction_table",
]
