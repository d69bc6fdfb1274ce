"""Record sources: where patients' timelines come from (MedAlign XML, MEDS, OMOP CDM, FHIR R4).

Every stage after reading (chunking, the index builder, the pipeline, the CLI) sees only the small `RecordSource`
protocol below, so a new source is one module that registers itself:

    @register_source("meds", detect=looks_like_meds)
    class MedsSource: ...

`open_source(path)` asks each registered source's `detect(path)` in registration order and opens the first that
claims the path; `open_source(path, format="omop")` skips detection.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from medalign_rag.errors import MedalignError
from medalign_rag.records.model import Instruction, ModelResponse, PatientRecord

__all__ = [
    "RecordSource",
    "SourceWarnings",
    "register_source",
    "source_names",
    "open_source",
    "detect_format",
]


@runtime_checkable
class RecordSource(Protocol):
    """What every stage needs from a data set. Records are read lazily, one patient per call."""

    def patient_ids(self) -> list[str]:
        """Sorted ids of the patients in the source (each safe as a file name)."""

    def load_record(self, patient_id: str) -> PatientRecord:
        """The patient's timeline; MedalignError naming the file/row when it cannot be read."""

    def fingerprint(self, patient_id: str) -> str:
        """A hex digest that changes when the patient's data changes (what index staleness keys on)."""

    def instructions(self) -> list[Instruction]:
        """Instructions that come with the source ([] when it has none)."""

    def model_responses(self) -> list[ModelResponse]:
        """Clinician-reviewed model responses that come with the source ([] when it has none)."""


class SourceWarnings:
    """Counted, non-fatal problems met while reading (unsupported FHIR types, unknown OMOP concepts, ...).

    Each kind of problem is counted; the first few examples (naming file and row/resource) are kept so that
    `inspect` can print one line per kind instead of one per occurrence.
    """

    MAX_EXAMPLES = 2

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(where)

    def lines(self) -> list[str]:
        """One line per kind: `<count> x <kind> (e.g. <where>; <where>)`."""
        return [
            f"{count} x {kind} (e.g. {'; '.join(self.examples[kind])})" for kind, count in sorted(self.counts.items())
        ]

    def __bool__(self) -> bool:
        return bool(self.counts)


@dataclass(frozen=True)
class _Registration:
    name: str
    factory: Callable[[Path], RecordSource]
    detect: Callable[[Path], bool]


_REGISTRY: dict[str, _Registration] = {}
# Modules that register the built-in sources; imported on first use so `import medalign_rag` stays light
# (duckdb, pyarrow and fhir are only needed when such data is opened).
_BUILTIN_MODULES = ("medalign_xml", "meds", "omop", "fhir")
# Detection order: the built-in sources in this order (whatever imported them first), then any others as registered.
_BUILTIN_ORDER = ("medalign-xml", "meds", "omop", "fhir")


def _ordered() -> list[_Registration]:
    rank = {name: position for position, name in enumerate(_BUILTIN_ORDER)}
    return sorted(_REGISTRY.values(), key=lambda r: rank.get(r.name, len(rank)))


def register_source(name: str, *, detect: Callable[[Path], bool]):
    """Class decorator: register `cls.open(path)` (or `cls(path)`) as the source `name`, claimed by `detect(path)`."""

    def decorate(cls):
        _REGISTRY[name] = _Registration(name=name, factory=getattr(cls, "open", cls), detect=detect)
        cls.format_name = name
        return cls

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def source_names() -> tuple[str, ...]:
    """Registered source names, in detection order."""
    _load_builtins()
    return tuple(r.name for r in _ordered())


def detect_format(path: str | os.PathLike) -> str:
    """The name of the first registered source that claims `path`; MedalignError when none does."""
    _load_builtins()
    path = Path(path)
    if not path.exists():
        raise MedalignError("data not found", path=path)
    for registration in _ordered():
        if registration.detect(path):
            return registration.name
    raise MedalignError(
        "cannot tell what records these are: expected a MedAlign folder (ehrs/ or medalign_ehr_xml/ with XML), "
        "a MEDS folder (data/*.parquet, metadata/), an OMOP CDM (.duckdb file or folder of person/... tables) or "
        f"FHIR R4 (Bundle .json / .ndjson files); say which with --format ({', '.join(source_names())})",
        path=path,
    )


def open_source(path: str | os.PathLike, format: str | None = None) -> RecordSource:
    """Open the records at `path`: detected from what is there, or read as `format` (a registered name)."""
    _load_builtins()
    if format is None:
        format = detect_format(path)
    elif format not in _REGISTRY:
        raise MedalignError(f"unknown data format {format!r} (known: {', '.join(source_names())})")
    if not Path(path).exists():
        raise MedalignError("data not found", path=path)
    return _REGISTRY[format].factory(Path(path))
