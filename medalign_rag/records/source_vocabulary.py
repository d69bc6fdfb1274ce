"""The vocabulary a record source ships, for retrieval that reads clinicians' words (retrieval/vocabulary.py).

A record source may offer `vocabulary_terms() -> list[SourceTerm]`: the names its own dictionaries give its
concepts, with their abbreviations and synonyms. It is optional (not part of the `RecordSource` protocol, so
third-party sources keep working); `source_terms(source)` returns [] for a source without it. What each built-in
source offers:

* MedAlign XML folder: the dictionary files in a `vocabulary/` folder beside `ehrs/` (MIMIC `d_items` and
  `d_labitems`, OMOP `concept` + `concept_synonym`, `synonyms.csv` term/synonym tables);
* MEDS: `metadata/codes.parquet` descriptions (each with its code's vocabulary as category), plus a `vocabulary/`
  folder beside `data/`;
* OMOP: `concept_synonym` joined to `concept` (each concept's synonyms read as its other names);
* FHIR: `CodeSystem` concepts (display and designations, FHIR's synonyms) and `ValueSet` expansions found in the
  data folder, plus a `vocabulary/` folder beside the resources.

`$MEDALIGN_RAG_VOCABULARY` (folders of such dictionary files) stays an extra, user-chosen source of terms.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from medalign_rag.retrieval.vocabulary import SourceTerm

VOCABULARY_DIRNAME = "vocabulary"


def folder_terms(folder: Path) -> list[SourceTerm]:
    """Terms of the dictionary files under `folder` ([] when there is no such folder)."""
    from medalign_rag.retrieval.vocabulary import source_vocabulary_terms

    if not folder.is_dir():
        return []
    return source_vocabulary_terms(folder)[0]


def _code_system_concepts(concepts: Any, category: str) -> Iterable[SourceTerm]:
    from medalign_rag.retrieval.vocabulary import SourceTerm

    for concept in concepts if isinstance(concepts, list) else []:
        if not isinstance(concept, dict):
            continue
        display = concept.get("display")
        synonyms = tuple(d["value"] for d in concept.get("designation") or []
                         if isinstance(d, dict) and isinstance(d.get("value"), str) and d["value"] != display)
        if isinstance(display, str) and display.strip():
            yield SourceTerm(display, synonyms, category)
        yield from _code_system_concepts(concept.get("concept"), category)  # nested (hierarchical) concepts


def fhir_terminology_terms(resources: Iterable[dict]) -> list[SourceTerm]:
    """Terms of FHIR terminology resources: CodeSystem concepts (display + designations) and ValueSet
    expansions; other resources are ignored."""
    terms: list[SourceTerm] = []
    for resource in resources:
        kind = resource.get("resourceType")
        category = str(resource.get("title") or resource.get("name") or "")
        if kind == "CodeSystem":
            terms.extend(_code_system_concepts(resource.get("concept"), category))
        elif kind == "ValueSet":
            expansion = resource.get("expansion") or {}
            terms.extend(_code_system_concepts(expansion.get("contains"), category))
    return terms


def source_terms(source: object) -> list[SourceTerm]:
    """What `source.vocabulary_terms()` gives, or [] for a source that ships no vocabulary."""
    method = getattr(source, "vocabulary_terms", None)
    return list(method()) if callable(method) else []
