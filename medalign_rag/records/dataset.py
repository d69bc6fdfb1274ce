"""A data folder in MedAlign's release layout: `ehrs/<person_id>.xml` plus the two instruction tables.

    DIR/ehrs/<person_id>.xml                      one EHR per patient (either XML layout)
    DIR/clinician-instruction-responses.tsv       optional: instructions and clinician answers
    DIR/clinician-reviewed-model-responses.tsv    optional: model responses ranked by clinicians

A folder without `ehrs/` whose XML files sit directly in it works too, and so does the path of a single XML file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medalign_rag.errors import MedalignError
from medalign_rag.records.instructions import read_instruction_table, read_model_responses
from medalign_rag.records.model import Instruction, ModelResponse, PatientRecord, check_patient_id
from medalign_rag.records.readers import read_record

__all__ = ["DataFolder", "open_data", "open_data_folder", "INSTRUCTIONS_FILENAME", "MODEL_RESPONSES_FILENAME", "EHRS_DIRNAME"]

EHRS_DIRNAME = "ehrs"
INSTRUCTIONS_FILENAME = "clinician-instruction-responses.tsv"
MODEL_RESPONSES_FILENAME = "clinician-reviewed-model-responses.tsv"


@dataclass(frozen=True)
class DataFolder:
    """Where a data set's records and tables are; reads them on demand (nothing is cached)."""

    root: Path
    ehrs_dir: Path
    # Set when the folder was opened from a single XML file: only that record belongs to it.
    single_file: Path | None = None

    @property
    def instructions_path(self) -> Path:
        return self.root / INSTRUCTIONS_FILENAME

    @property
    def model_responses_path(self) -> Path:
        return self.root / MODEL_RESPONSES_FILENAME

    def _record_files(self) -> list[Path]:
        if self.single_file is not None:
            return [self.single_file]
        # Dot-files are editors' or our own atomic writes' temporaries, not records.
        return [p for p in self.ehrs_dir.glob("*.xml") if p.is_file() and not p.name.startswith(".")]

    def patient_ids(self) -> list[str]:
        """Sorted ids of the patients in the folder (the XML file stems); an unsafe stem is an error."""
        return sorted(check_patient_id(p.stem, path=str(p)) for p in self._record_files())

    def record_path(self, patient_id: str) -> Path:
        """The XML file of `patient_id`; MedalignError if the id is unsafe or the file is not there."""
        check_patient_id(patient_id, path=str(self.ehrs_dir))
        if self.single_file is not None:
            if patient_id != self.single_file.stem:
                raise MedalignError(f"no EHR for patient {patient_id!r} (this data is one file)", path=self.single_file)
            return self.single_file
        path = self.ehrs_dir / f"{patient_id}.xml"
        if not path.is_file():
            raise MedalignError(f"no EHR for patient {patient_id!r}", path=path)
        return path

    def fingerprint(self, patient_id: str) -> str:
        """What an index or a stored result of this patient is keyed on: the record file's sha256."""
        from medalign_rag.atomic import file_sha256

        return file_sha256(self.record_path(patient_id))

    def load_record(self, patient_id: str) -> PatientRecord:
        return read_record(self.record_path(patient_id), patient_id=patient_id)

    def instructions(self) -> list[Instruction]:
        """The instruction table's instructions, or [] when the folder has none."""
        path = self.instructions_path
        return read_instruction_table(path) if self.single_file is None and path.is_file() else []

    def model_responses(self) -> list[ModelResponse]:
        """The clinician-reviewed model responses, or [] when the folder has none."""
        path = self.model_responses_path
        return read_model_responses(path) if self.single_file is None and path.is_file() else []


def open_data_folder(path: str | os.PathLike) -> DataFolder:
    """Open a data folder (`DIR/ehrs/*.xml`, or `DIR/*.xml`, or one XML file); MedalignError if there is none."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".xml":
            raise MedalignError("not a data folder or an EHR XML file", path=path)
        return DataFolder(root=path.parent, ehrs_dir=path.parent, single_file=path)
    if not path.is_dir():
        raise MedalignError("data folder not found", path=path)
    ehrs = path / EHRS_DIRNAME
    if ehrs.is_dir():
        return DataFolder(root=path, ehrs_dir=ehrs)
    if any(p.is_file() for p in path.glob("*.xml")):
        return DataFolder(root=path, ehrs_dir=path)
    raise MedalignError(f"no {EHRS_DIRNAME}/ folder and no .xml files in the data folder", path=path)


def open_data(path: str | os.PathLike) -> DataFolder:
    """Open the records at `path` (the front door's name for opening any supported source)."""
    return open_data_folder(path)
