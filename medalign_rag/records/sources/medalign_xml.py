"""MedAlign's release as it is laid out: one XML file per patient plus the two instruction tables.

    DIR/medalign_ehr_xml/<person_id>.xml          the release's folder name (what MedHELM's reader opens)
    DIR/ehrs/<person_id>.xml                      the name the paper's sample and older tools use
    DIR/clinician-instruction-responses.tsv       optional: instructions and clinician answers
    DIR/clinician-reviewed-model-responses.tsv    optional: model responses ranked by clinicians

A folder whose XML files sit directly in it works too, and so does the path of a single XML file. Either XML
layout (paper `<record>` or release `<eventstream>`) is read. Questions come from either table: the instruction
table when present, and any instruction only the model-response table names (HELM takes its questions there).
`annotator_num` may read `1` or `Annotator_1`; rows of one instruction merge whatever the form.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medalign_rag.atomic import file_sha256
from medalign_rag.errors import MedalignError
from medalign_rag.records.instructions import (
    INSTRUCTIONS_FILENAME,
    MODEL_RESPONSES_FILENAME,
    read_instruction_table,
    read_model_response_questions,
    read_model_responses,
)
from medalign_rag.records.model import Instruction, ModelResponse, PatientRecord, check_patient_id
from medalign_rag.records.readers import read_record
from medalign_rag.records.sources import SourceWarnings, register_source

__all__ = [
    "DataFolder",
    "open_data_folder",
    "looks_like_medalign_folder",
    "EHRS_DIRNAMES",
    "EHRS_DIRNAME",
    "RELEASE_EHRS_DIRNAME",
    "release_records_dir",
    "INSTRUCTIONS_FILENAME",
    "MODEL_RESPONSES_FILENAME",
]

RELEASE_EHRS_DIRNAME = "medalign_ehr_xml"
EHRS_DIRNAME = "ehrs"
# Looked for in this order: the release's own name first.
EHRS_DIRNAMES = (RELEASE_EHRS_DIRNAME, EHRS_DIRNAME)
UNSAFE_NAME_WARNING = "record files skipped: the name is not a safe patient id (letters, digits, '_', '-', '.')"


def _is_record_file(path: Path) -> bool:
    # Dot-files are editors' or our own atomic writes' temporaries, not records.
    return path.is_file() and path.suffix.lower() == ".xml" and not path.name.startswith(".")


def looks_like_medalign_folder(path: Path) -> bool:
    """An XML file, a folder with `medalign_ehr_xml/` or `ehrs/`, or a folder of XML files."""
    if path.is_file():
        return path.suffix.lower() == ".xml"
    if not path.is_dir():
        return False
    if any((path / name).is_dir() for name in EHRS_DIRNAMES):
        return True
    return any(_is_record_file(p) for p in path.glob("*.xml"))


@register_source("medalign-xml", detect=looks_like_medalign_folder)
@dataclass(frozen=True)
class DataFolder:
    """Where a data set's records and tables are; reads them on demand (nothing is cached)."""

    root: Path
    ehrs_dir: Path
    # Set when the folder was opened from a single XML file: only that record belongs to it.
    single_file: Path | None = None
    warnings: SourceWarnings = field(default_factory=SourceWarnings, compare=False, repr=False)
    _skipped: set[Path] = field(default_factory=set, compare=False, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "DataFolder":
        return open_data_folder(path)

    @property
    def instructions_path(self) -> Path:
        return self.root / INSTRUCTIONS_FILENAME

    @property
    def model_responses_path(self) -> Path:
        return self.root / MODEL_RESPONSES_FILENAME

    def _record_files(self) -> list[Path]:
        if self.single_file is not None:
            return [self.single_file]
        return [p for p in self.ehrs_dir.glob("*.xml") if _is_record_file(p)]

    def patient_ids(self) -> list[str]:
        """Sorted ids of the patients in the folder (the XML file stems). A file whose stem is not a safe patient id
        (`9900000000003 (copy).xml`) is skipped and named in `warnings`, so one stray copy does not block the folder;
        a single file opened by path must have a safe name."""
        if self.single_file is not None:
            return [check_patient_id(self.single_file.stem, path=str(self.single_file))]
        ids = []
        for path in self._record_files():
            try:
                ids.append(check_patient_id(path.stem, path=str(path)))
            except MedalignError:
                if path not in self._skipped:  # patient_ids() is called more than once per command
                    self._skipped.add(path)
                    self.warnings.add(UNSAFE_NAME_WARNING, path.name)
        return sorted(ids)

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

    def load_record(self, patient_id: str) -> PatientRecord:
        return read_record(self.record_path(patient_id), patient_id=patient_id)

    def vocabulary_terms(self) -> list:
        """The source's dictionaries in a `vocabulary/` folder beside the records (records/source_vocabulary.py)."""
        from medalign_rag.records.source_vocabulary import VOCABULARY_DIRNAME, folder_terms

        return folder_terms(self.root / VOCABULARY_DIRNAME)

    def fingerprint(self, patient_id: str) -> str:
        """What an index or a stored result of this patient is keyed on: the record file's sha256."""
        return file_sha256(self.record_path(patient_id))

    def instructions(self) -> list[Instruction]:
        """The instructions of either table, or [] when the folder has neither.

        The instruction table gives questions and clinician answers; an instruction that only the model-response
        table names is added (after them, in that table's order) with its question and no reference answer.
        """
        if self.single_file is not None:
            return []
        found = read_instruction_table(self.instructions_path) if self.instructions_path.is_file() else []
        if self.model_responses_path.is_file():
            known = {instruction.instruction_id for instruction in found}
            for instruction in read_model_response_questions(self.model_responses_path):
                if instruction.instruction_id not in known:
                    known.add(instruction.instruction_id)
                    found.append(instruction)
        return found

    def model_responses(self) -> list[ModelResponse]:
        """The clinician-reviewed model responses, or [] when the folder has none."""
        path = self.model_responses_path
        return read_model_responses(path) if self.single_file is None and path.is_file() else []


def release_records_dir(root: str | os.PathLike) -> Path:
    """Where a writer (`synth`, the converters) puts records in `root`: `root/medalign_ehr_xml/`, created.

    A folder whose `ehrs/` already holds XML records (written in the older layout) is refused: records in both
    folders would not open (`open_data_folder`), and mixing them would silently drop one half.
    """
    root = Path(root)
    target = root / RELEASE_EHRS_DIRNAME
    older = root / EHRS_DIRNAME
    if older.is_dir() and any(_is_record_file(p) for p in older.glob("*.xml")):
        raise MedalignError(
            f"{EHRS_DIRNAME}/ already holds XML records of the older layout; records are now written to "
            f"{RELEASE_EHRS_DIRNAME}/: write to a new folder, or move {EHRS_DIRNAME}/ away first",
            path=older,
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedalignError(f"cannot create the output folder: {error.strerror or error}", path=target) from None
    return target


def open_data_folder(path: str | os.PathLike) -> DataFolder:
    """Open a MedAlign folder (`DIR/medalign_ehr_xml/*.xml`, `DIR/ehrs/*.xml`, `DIR/*.xml`, or one XML file)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".xml":
            raise MedalignError("not a data folder or an EHR XML file", path=path)
        return DataFolder(root=path.parent, ehrs_dir=path.parent, single_file=path)
    if not path.is_dir():
        raise MedalignError("data folder not found", path=path)
    present = [path / name for name in EHRS_DIRNAMES if (path / name).is_dir()]
    if len(present) == 2 and all(any(_is_record_file(p) for p in folder.glob("*.xml")) for folder in present):
        raise MedalignError(
            f"both {RELEASE_EHRS_DIRNAME}/ and {EHRS_DIRNAME}/ hold XML records; keep one of them", path=path
        )
    for folder in present:
        if any(_is_record_file(p) for p in folder.glob("*.xml")) or len(present) == 1:
            return DataFolder(root=path, ehrs_dir=folder)
    if any(_is_record_file(p) for p in path.glob("*.xml")):
        return DataFolder(root=path, ehrs_dir=path)
    raise MedalignError(
        f"no {EHRS_DIRNAME}/ folder (nor {RELEASE_EHRS_DIRNAME}/) and no .xml files in the data folder", path=path
    )
