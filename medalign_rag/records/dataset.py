"""Kept for existing imports: the MedAlign folder lives in `records/sources/medalign_xml.py`, and `open_data`
opens any registered record source (MedAlign XML, MEDS, OMOP CDM, FHIR R4)."""

from __future__ import annotations

import os

from medalign_rag.records.sources import RecordSource, open_source
from medalign_rag.records.sources.medalign_xml import (
    EHRS_DIRNAME,
    EHRS_DIRNAMES,
    INSTRUCTIONS_FILENAME,
    MODEL_RESPONSES_FILENAME,
    RELEASE_EHRS_DIRNAME,
    DataFolder,
    open_data_folder,
)

__all__ = [
    "DataFolder",
    "open_data",
    "open_data_folder",
    "INSTRUCTIONS_FILENAME",
    "MODEL_RESPONSES_FILENAME",
    "EHRS_DIRNAME",
    "EHRS_DIRNAMES",
    "RELEASE_EHRS_DIRNAME",
]


def open_data(path: str | os.PathLike, format: str | None = None) -> RecordSource:
    """Open the records at `path` (the front door's name for `open_source`): detected, or read as `format`."""
    return open_source(path, format=format)
