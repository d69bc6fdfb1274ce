"""The per-patient concept table: every concept in one record, searchable by name.

A question names a concept (a lab, a drug, a diagnosis, a kind of visit) and the answer sits in that concept's
events. A patient has a few hundred distinct concepts against tens of thousands of events, so matching the
question against *concept names* first is both cheap and precise: "potassium" reaches this patient's "Potassium"
and "Potassium, Whole Blood", "SpO2" (through the source's own dictionary) "O2 saturation pulseoxymetry",
"meds" every drug.

Each concept row holds name, code, kind, unit, first and last time, count and last value, and the flat positions
of its events. The search text of a concept is its name, its kind's generic words (vocabulary.KIND_LABELS), its
code and the source dictionary's abbreviations and category for the name. Matching is lexical (bm25s over those
texts, the question expanded with clinicians' abbreviations) fused with dense similarity (the index's sentence
encoder over the names), both over the patient's own names only.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Iterable

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS
from functools import lru_cache

from medalign_rag.records.model import Event, EventKind
from medalign_rag.retrieval.vocabulary import CLASS_WORDS, KIND_LABELS, Vocabulary, kinds_named

if TYPE_CHECKING:
    from medalign_rag.index.embedding import Embedder
    from medalign_rag.index.store import PatientIndex

logging.getLogger("bm25s").setLevel(logging.WARNING)

# Words of the asking ("any", "what", "patient") match concept names like "Any fear in relationships": dropped.
STOPWORDS = sorted(set(STOPWORDS_EN_PLUS) | {"patient", "patients", "pt", "value", "values", "total", "number",
                                              "amount", "count", "times", "time", "measured", "recorded", "show",
                                              "tell", "give", "list", "please", "could", "would", "ever", "since",
                                              # verbs of the asking: "received", "given" say nothing of the concept
                                              "received", "receive", "given", "performed", "done", "had", "taken",
                                              "ordered", "administered", "undergo", "underwent", "sort", "type",
                                              "kind", "route", "name"})


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer  # PyStemmer: "drugs"/"drug", "diagnosed"/"diagnoses" meet

    return Stemmer.Stemmer("english")


# "Chest Tube #2": a number sign makes its number a word of the name ("no2"), which the tokenizer would otherwise
# drop as a lone digit, leaving "#1" and "#2" alike
_NUMBER_SIGN = re.compile(r"#\s*(\d+)\b")


def _numbered(text: str) -> str:
    return _NUMBER_SIGN.sub(r" no\1 ", text)


def _tokenize(texts: list[str], *, return_ids: bool = True):
    return bm25s.tokenize([_numbered(t) for t in texts], stopwords=STOPWORDS, stemmer=_stemmer(),
                          show_progress=False, return_ids=return_ids)


# Concept names recur across patients ("Potassium", "Heart Rate"): their vectors are computed once per process.
_NAME_VECTORS: dict[tuple[str, str], np.ndarray] = {}

# A word the abbreviation list knows ("pres": posterior reversible encephalopathy syndrome) is still read as a
# clipping of this patient's words ("pressure") when it has at least this many letters and none of its listed
# meanings is a concept of this patient; shorter ones ("art", "sat") are left to the list.
MIN_LISTED_CLIPPING = 4
MAX_CLIPPINGS = 6  # a shortened word standing for more of this patient's words than this is too vague to expand
# Words of measure that put the next word in a noun's place: "total out", "volume of out" (out: output).
QUANTITY_WORDS = frozenset({"total", "amount", "volume", "quantity", "sum", "net"})
_WORD = re.compile(r"[a-z0-9]+")
_ABBREVIATION_TOKEN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9]*\+?")
_VOWELS = frozenset("aeiouy")
_TYPED_WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s' own token pattern: the words `_tokenize` stems

LEXICAL_WEIGHT = 0.6  # share of the lexical score in a concept's match score (the rest is dense similarity)
MIN_DENSE_SIMILARITY = 0.45  # a concept with no lexical match must be at least this close in meaning
MATCH_FRACTION = 0.6  # a concept matches at >= this fraction of the best concept's score


@dataclass
class Concept:
    name: str
    kind: EventKind
    code: str | None
    unit: str | None
    first: datetime
    last: datetime
    count: int
    last_value: str | None
    events: np.ndarray  # flat event numbers (see ConceptTable), chronological


def concept_name(event: Event) -> str:
    if event.name:
        return event.name
    return event.source_type or event.kind.value


def concept_key(event: Event) -> tuple[str, str]:
    """Events of one concept: same kind and the same name up to case and spacing."""
    return event.kind.value, re.sub(r"\s+", " ", concept_name(event).strip().lower())


@dataclass
class ConceptMatch:
    concept: int
    score: float  # fused, 0..1
    lexical: float  # bm25 share of the best lexical score, 0..1
    dense: float  # cosine similarity
    coverage: float = 1.0  # share of the query's words (or of what its abbreviations stand for) in the concept


@dataclass
class ConceptTable:
    """Concepts of one patient index, with flat event arrays that map every event to its concept and place."""

    concepts: list[Concept]
    event_concept: np.ndarray  # flat event number -> concept number
    event_chunk: np.ndarray  # flat event number -> chunk position
    event_offset: np.ndarray  # flat event number -> position inside its chunk
    event_time: np.ndarray  # flat event number -> datetime64[s]
    search_texts: list[str]
    bm25: bm25s.BM25 | None
    search_tokens: list[frozenset[str]] = field(default_factory=list)
    vocabulary: Vocabulary | None = field(default=None, repr=False)
    _vectors: np.ndarray | None = field(default=None, repr=False)
    _words_by_letter: dict[str, list[str]] | None = field(default=None, repr=False)
    _clippings: dict[tuple[str, bool], tuple[str, ...]] = field(default_factory=dict, repr=False)
    _name_words: frozenset[str] | None = field(default=None, repr=False)
    _surface: dict[str, str] | None = field(default=None, repr=False)  # stem -> a name's spelling of it
    _numbered: frozenset[str] | None = field(default=None, repr=False)
    _name_pairs: frozenset[tuple[str, str]] | None = field(default=None, repr=False)
    _spelled_by_letter: dict[str, list[tuple[str, str]]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.concepts)

    def vectors(self, embedder: Embedder) -> np.ndarray:
        """Dense vectors of the concept names, computed on first use (a few hundred short texts)."""
        if self._vectors is None:
            names = [c.name for c in self.concepts]
            missing = sorted({n for n in names if (embedder.model_name, n) not in _NAME_VECTORS})
            if missing:
                for name, vector in zip(missing, embedder.embed_texts(missing)):
                    _NAME_VECTORS[(embedder.model_name, name)] = vector
            self._vectors = (np.stack([_NAME_VECTORS[(embedder.model_name, n)] for n in names]) if names
                             else np.zeros((0, embedder.dimension), np.float32))
        return self._vectors

    def clippings(self, word: str, *, stopword: bool = False) -> tuple[str, ...]:
        """This patient's (stemmed) concept words that `word`, absent from them, shortens: a clipping ("temp":
        temperature, "micro": microbiology, "phos": phosphate, "press": pressure) or, for a word with no vowel
        after its first letter, a contraction ("wgt": weight, "plts": platelets, "hct": hematocrit). Words the
        abbreviation list knows are left to it; () when none, or too many to mean anything."""
        cached = self._clippings.get((word, stopword))
        if cached is not None:
            return cached
        found: tuple[str, ...] = ()
        if len(word) >= 3 and not word.isdigit() and (stopword or word not in _STOPWORD_SET) and \
                not self._left_to_the_list(word):
            if self._words_by_letter is None:
                by_letter: dict[str, set[str]] = {}
                for tokens in self.search_tokens:
                    for token in tokens:
                        by_letter.setdefault(token[:1], set()).add(token)
                self._words_by_letter = {k: sorted(v) for k, v in by_letter.items()}
            words = self._words_by_letter.get(word[0], [])
            prefixed = [w for w in words if len(w) > len(word) and w.startswith(word)]
            # a clipping is a prefix of the word as the name spells it, which its stem need not keep: "doxy"
            # stems to "doxi", and "abdomina" is longer than "abdominal"'s stem "abdomin"
            own = _stemmer().stemWord(word)  # "medication" is no clipping of "medications"
            prefixed += [stem for spelled, stem in self._spelled_words(word[0]) if len(spelled) > len(word)
                         and spelled.startswith(word) and stem not in (word, own) and stem not in prefixed]
            if not prefixed and word.endswith("s") and len(word) >= 4 and word[:-1] not in words:
                # the plural of a clipping ("sats": saturation, "temps"): the plural's "s" is not a letter of it
                prefixed = [w for w in words if len(w) > len(word) - 1 and w.startswith(word[:-1])]
            if word in words:
                # the word is itself a label word here ("Temp Pacemaker Rate"): a longer word is another reading
                # only where it stands without it ("Temperature Fahrenheit"), not as the label's own spelled-out form
                prefixed = [w for w in prefixed if any(w in t and word not in t for t in self.search_tokens)]
                contracted = []
            else:
                contracted = [] if _VOWELS & set(word[1:]) else [
                    w for w in words if len(w) > len(word) and not w.startswith(word)
                    and (_is_subsequence(word, w) or (word.endswith("s") and _is_subsequence(word[:-1], w)))]
            found = tuple(prefixed) if prefixed else tuple(contracted)
            if len(found) > MAX_CLIPPINGS:
                found = ()
        self._clippings[(word, stopword)] = found
        return found

    def _spelled_words(self, letter: str) -> list[tuple[str, str]]:
        """(word as this patient's names spell it, its stem), for the words starting with `letter`."""
        if self._spelled_by_letter is None:
            by_letter: dict[str, set[tuple[str, str]]] = {}
            for text in self.search_texts:
                for spelled in _TYPED_WORD.findall(text.lower()):
                    if not spelled.isdigit():
                        by_letter.setdefault(spelled[:1], set()).add((spelled, _stemmer().stemWord(spelled)))
            self._spelled_by_letter = {k: sorted(v) for k, v in by_letter.items()}
        return self._spelled_by_letter.get(letter, [])

    def _left_to_the_list(self, word: str) -> bool:
        """`word` is an abbreviation the list knows, read by the list's meanings rather than as a clipping: always
        when shorter than MIN_LISTED_CLIPPING, else when one of its meanings is a concept of this patient."""
        listed = self.vocabulary.meanings(word) if self.vocabulary is not None else ()
        if not listed:
            return False
        return len(word) < MIN_LISTED_CLIPPING or any(self._holds_whole(m) for m in listed)

    def typed_clippings(self, query: str) -> dict[str, tuple[str, ...]]:
        """Each (stemmed) word of `query` -> its clippings, read from the word as typed: "doxy" (stem "doxi") ->
        "doxycyclin". {} entries are left out."""
        found: dict[str, tuple[str, ...]] = {}
        for typed in _TYPED_WORD.findall(_numbered(query).lower()):
            if typed in _STOPWORD_SET or kinds_named(typed):
                continue  # a kind's word ("meds", "dx") is read as its kind (vocabulary.KIND_WORDS), not clipped
            stem = _stemmer().stemWord(typed)
            if stem not in found:
                readings = self.clippings(typed)
                if stem != typed:
                    readings = tuple(dict.fromkeys((*readings, *self.clippings(stem))))
                found[stem] = tuple(r for r in readings if r != stem)
        return {stem: readings for stem, readings in found.items() if readings}

    def noun_position_clippings(self, query: str) -> dict[str, tuple[str, ...]]:
        """Stopwords of `query` that stand where a noun stands and shorten this patient's concept words: clinicians
        write "total out", "foley out" for output. A stopword is in a noun's place right after a word of measure
        ("total", "volume") or a word of this patient's concept names ("foley", "void"); after anything else
        ("find out", "carried out") it is the function word it usually is. {} when there is none."""
        words = _WORD.findall(_numbered(query.lower()))
        found: dict[str, tuple[str, ...]] = {}
        for previous, word in zip(words, words[1:]):
            if word not in _STOPWORD_SET or word in found:
                continue
            if previous in QUANTITY_WORDS or (previous not in _STOPWORD_SET and self._is_name_word(previous)):
                readings = self.clippings(word, stopword=True)
                if readings:
                    found[word] = readings
        return found

    def reading_words(self, query: str) -> list[str]:
        """The words of this patient's concept names that the shortened words of `query` stand for, as the names
        spell them ("micro" -> "microbiology", "microcytes"; "total out" -> "output"): for text retrieval, which
        does not read clippings by itself."""
        if self._surface is None:
            surface: dict[str, str] = {}
            for text in self.search_texts:
                for word in _WORD.findall(text.lower()):
                    surface.setdefault(_stemmer().stemWord(word), word)
            self._surface = surface
        readings = [r for found in self.typed_clippings(query).values() for r in found]
        readings += [r for found in self.noun_position_clippings(query).values() for r in found]
        return list(dict.fromkeys(self._surface[r] for r in readings if r in self._surface))

    def named_classes(self, query: str) -> set[str]:
        """Class words (vocabulary.CLASS_WORDS) that `query` uses as part of one of this patient's concept names
        rather than for the class: "blood culture" names "Blood Culture, Routine", so it is not read as every
        microbiology result; "any cultures", "the specimen test", "sputum culture" (no such name) are."""
        if self._name_pairs is None:
            pairs: set[tuple[str, str]] = set()
            for concept in self.concepts:
                words = [_stemmer().stemWord(w) for w in _WORD.findall(concept.name.lower())]
                pairs.update(zip(words, words[1:]))
            self._name_pairs = frozenset(pairs)
        words = [_stemmer().stemWord(w) for w in _WORD.findall(query.lower())]
        named = set()
        for name, class_words in CLASS_WORDS.items():
            stems = {_stemmer().stemWord(w) for w in class_words}
            if any(b in stems and (a, b) in self._name_pairs for a, b in zip(words, words[1:])):
                named.add(name)
        return named

    def numbered_words(self) -> frozenset[str]:
        """Lower-case words that a number sign follows in this patient's concept names ("tube" of "Chest Tube
        #1"): cues.normalize_shorthand keeps "#1" after them as part of the name rather than as "first"."""
        if self._numbered is None:
            self._numbered = frozenset(m.group(1).lower() for c in self.concepts
                                       for m in re.finditer(r"([A-Za-z][A-Za-z0-9]*)\W*#\s*\d", c.name))
        return self._numbered

    def _is_name_word(self, word: str) -> bool:
        if self._name_words is None:
            self._name_words = frozenset(t for tokens in self.search_tokens for t in tokens)
        return _stemmer().stemWord(word) in self._name_words

    def lexical_scores(self, query: str, extra_readings: Iterable[tuple[str, ...]] = ()) -> np.ndarray:
        """BM25 over the concepts' search texts, plus each shortened word's readings (clippings; `extra_readings`:
        readings of words the tokenizer drops, such as a stopword in a noun's place)."""
        if self.bm25 is None:
            return np.zeros(len(self.concepts), dtype=np.float32)
        tokens = _tokenize([query], return_ids=False)[0]
        extra_readings = [r for r in extra_readings if r]
        if not tokens and not extra_readings:
            return np.zeros(len(self.concepts), dtype=np.float32)
        scores = (np.asarray(self.bm25.get_scores(tokens), dtype=np.float32) if tokens
                  else np.zeros(len(self.concepts), dtype=np.float32))
        clipped = self.typed_clippings(query)
        for readings in [clipped.get(token, ()) for token in dict.fromkeys(tokens)] + extra_readings:
            if not readings:
                continue
            # the readings of one shortened word are alternatives ("micro": microbiology or microcytes), weighed
            # alike: each reading's scores scaled to the strongest reading's best, so a rarer reading does not
            # outweigh a common one by its rarity alone
            per_reading = [np.asarray(self.bm25.get_scores([r]), dtype=np.float32) for r in readings]
            strongest = max(float(r.max()) for r in per_reading)
            if strongest > 0:
                scores += np.max([r / r.max() * strongest if r.max() > 0 else r for r in per_reading], axis=0)
        return scores

    def match(self, query: str, *, expansions: Iterable[str] = (), embedder: Embedder | None = None,
              lexical_weight: float = LEXICAL_WEIGHT, min_dense: float = MIN_DENSE_SIMILARITY,
              fraction: float = MATCH_FRACTION, limit: int | None = None) -> list[ConceptMatch]:
        """Concepts of this patient that `query` asks about, best first (empty when none is close enough).

        `expansions`: what the question's abbreviations stand for (Vocabulary.meanings_in of the question as
        typed, before any lower-casing), matched along with the query."""
        expansions = [e for e in expansions if e.lower() not in query.lower() and e not in self.named_classes(query)]
        # dense similarity reads "press" as the verb: the words this patient's names spell it as are read too
        expanded = f"{query} {' '.join(expansions + self.reading_words(query))}".strip()
        if not self.concepts or not expanded:
            return []
        particles = self.noun_position_clippings(query)
        # dense similarity reads every meaning (it weighs them by itself); lexical matching only those held whole
        lexical = self.lexical_scores(f"{query} {' '.join(self.held_whole(expansions, query))}",
                                      particles.values())
        best_lexical = float(lexical.max()) if len(lexical) else 0.0
        lexical = lexical / best_lexical if best_lexical > 0 else np.zeros_like(lexical)
        if embedder is not None:
            dense = self.vectors(embedder) @ np.asarray(embedder.embed_query(expanded), dtype=np.float32)
        else:
            dense = np.zeros(len(self.concepts), dtype=np.float32)
            lexical_weight = 1.0
        # Dense similarity below the floor says "unrelated": it adds nothing rather than a little to everything.
        dense_part = np.clip((dense - min_dense) / max(1e-6, 1.0 - min_dense), 0.0, 1.0)
        score = lexical_weight * lexical + (1.0 - lexical_weight) * dense_part
        best = float(score.max())
        if best <= 0:
            return []
        chosen = np.flatnonzero(score >= fraction * best)
        chosen = chosen[np.argsort(-score[chosen], kind="stable")][:limit]
        words = _tokenize([query], return_ids=False)[0] + list(particles)
        meant = set(_tokenize([" ".join(expansions)], return_ids=False)[0]) if expansions else set()
        readings = {**self.typed_clippings(query), **self.abbreviation_readings(query, expansions), **particles}
        return [ConceptMatch(int(i), float(score[i]), float(lexical[i]), float(dense[i]),
                             self.coverage(int(i), words, meant, readings)) for i in chosen]

    def abbreviation_readings(self, query: str, expansions: list[str]) -> dict[str, tuple[str, ...]]:
        """Each abbreviation of `query` (a stemmed word) -> the stemmed words of its meanings among `expansions`:
        "na" -> ("sodium",), so "0.9% Na Cl" covers "Sodium Chloride" word by word."""
        if self.vocabulary is None or not expansions:
            return {}
        wanted = {e.lower() for e in expansions}
        found: dict[str, tuple[str, ...]] = {}
        for raw in set(_ABBREVIATION_TOKEN.findall(query)):
            meanings = [m for m in self.vocabulary.meanings(raw) if m.lower() in wanted]
            stems = _tokenize([raw], return_ids=False)[0]
            if meanings and len(stems) == 1:
                found[stems[0]] = tuple(_tokenize([" ".join(meanings)], return_ids=False)[0])
        return found

    def held_whole(self, meanings: list[str], query: str = "") -> list[str]:
        """`meanings` less the readings of an ambiguous abbreviation of `query` that no concept of this patient
        holds whole, when another of its readings is held: "Cr" (clinical response, complete response,
        controlled release, creatinine) is read as "Creatinine" here, not by the stray word "response" one of its
        other readings shares with "GCS - Verbal Response". An abbreviation with one meaning ("UOP": urine
        output) or none held keeps them all, unless it is read as a clipping of this patient's words instead
        ("pres": pressure; see _left_to_the_list); meanings of no abbreviation (kind words, drug names) stay."""
        if self.vocabulary is None or not query:
            return list(meanings)
        dropped: set[str] = set()
        for raw in set(_ABBREVIATION_TOKEN.findall(query)):
            readings = self.vocabulary.meanings(raw)
            if not readings:
                continue
            held = [m for m in readings if self._holds_whole(m)]
            if held:
                if len(readings) >= 2:
                    dropped |= {m.lower() for m in readings if m not in held}
            elif not self._left_to_the_list(raw.lower()) and self.clippings(raw.lower()):
                dropped |= {m.lower() for m in readings}  # read as a clipping of this patient's words instead
        return [m for m in meanings if m.lower() not in dropped]

    def _holds_whole(self, meaning: str) -> bool:
        words = set(_tokenize([meaning], return_ids=False)[0])
        return bool(words) and any(all(_held(w, tokens) for w in words) for tokens in self.search_tokens)

    def coverage(self, concept: int, words: list[str], meant: set[str],
                 readings: dict[str, tuple[str, ...]] | None = None) -> float:
        """Share of the query's words found in the concept's search text; a shortened word or an abbreviation
        counts as found when one of its readings is (`readings`, else its clippings); one more word counts when
        something else the question's abbreviations stand for is (`meant`: lay terms of several words)."""
        if not words:
            return 0.0
        tokens = self.search_tokens[concept]
        readings = readings or {}
        found = sum(1 for w in words if w in tokens or any(c in tokens for c in readings.get(w) or
                                                           self.clippings(w)))
        if meant & tokens and found < len(words):
            found += 1
        return min(1.0, found / len(words))


def _held(word: str, tokens: frozenset[str]) -> bool:
    """`word` is among `tokens`, or one of them shares its stem up to an inflection ("urinari" / "urin")."""
    return word in tokens or (len(word) >= 4 and any(
        len(t) >= 4 and (t.startswith(word) or word.startswith(t)) for t in tokens))


def _is_subsequence(short: str, word: str) -> bool:
    """`short`'s letters appear in `word` in order, starting with the same letter ("wgt" in "weight")."""
    if not word.startswith(short[0]):
        return False
    rest = iter(word[1:])
    return all(letter in rest for letter in short[1:])


_STOPWORD_SET = frozenset(STOPWORDS)


def build_concept_table(index: PatientIndex, vocabulary: Vocabulary | None = None) -> ConceptTable:
    keys: dict[tuple[str, str], int] = {}
    members: list[list[int]] = []
    first_event: list[Event] = []
    codes: list[Counter] = []
    event_concept, event_chunk, event_offset, stamps = [], [], [], []
    flat = 0
    last_event: list[Event] = []
    for position, chunk in enumerate(index.chunks):
        for offset, event in enumerate(chunk.events):
            key = concept_key(event)
            number = keys.get(key)
            if number is None:
                number = keys[key] = len(members)
                members.append([])
                first_event.append(event)
                last_event.append(event)
                codes.append(Counter())
            members[number].append(flat)
            if event.code:
                codes[number][event.code] += 1
            if event.timestamp >= last_event[number].timestamp:
                last_event[number] = event
            event_concept.append(number)
            event_chunk.append(position)
            event_offset.append(offset)
            stamps.append(np.datetime64(event.timestamp.replace(microsecond=0), "s"))
            flat += 1
    event_time = np.array(stamps, dtype="datetime64[s]")
    concepts: list[Concept] = []
    for number, flat_events in enumerate(members):
        events = np.asarray(flat_events, dtype=np.int64)
        events = events[np.argsort(event_time[events], kind="stable")]
        sample, latest = first_event[number], last_event[number]
        concepts.append(Concept(
            name=concept_name(sample), kind=sample.kind,
            code=codes[number].most_common(1)[0][0] if codes[number] else None,
            unit=sample.unit, first=min(event_time[events]).astype(datetime), last=latest.timestamp,
            count=len(events), last_value=latest.value, events=events))
    texts = [concept_search_text(c, vocabulary) for c in concepts]
    model = None
    token_lists = _tokenize(texts, return_ids=False) if texts else []
    if texts:
        model = bm25s.BM25()
        model.index(_tokenize(texts), show_progress=False)
    return ConceptTable(concepts=concepts, event_concept=np.asarray(event_concept, dtype=np.int64),
                        event_chunk=np.asarray(event_chunk, dtype=np.int64),
                        event_offset=np.asarray(event_offset, dtype=np.int64), event_time=event_time,
                        search_texts=texts, bm25=model, search_tokens=[frozenset(t) for t in token_lists],
                        vocabulary=vocabulary)


def concept_search_text(concept: Concept, vocabulary: Vocabulary | None) -> str:
    parts = [concept.name, KIND_LABELS.get(concept.kind, "")]
    if concept.code:
        parts.append(concept.code.replace("/", " "))
    if concept.unit:
        parts.append(concept.unit)
    if vocabulary is not None:
        parts.append(vocabulary.concept_words(concept.name))
    return " ".join(p for p in parts if p)


def concept_table(index: PatientIndex, vocabulary: Vocabulary | None = None) -> ConceptTable:
    """The index's concept table, built on first use and kept in the loaded index's state (per vocabulary)."""
    per_vocabulary = index.state.concepts
    key = id(vocabulary) if vocabulary is not None else None
    table = per_vocabulary.get(key)
    if table is None:
        table = per_vocabulary[key] = build_concept_table(index, vocabulary)
    return table
