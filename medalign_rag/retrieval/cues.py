"""Time cues of an instruction as clinicians write them: shorthand normalized, dates found by a library.

`time_cues.py`'s rule set reads the benchmark's phrasing well ("since 08/11/2146", "the first hospital visit",
"last month"). Clinicians write "since 8/11/46", "1st adm", "prev hosp", "past 30d", "on Mar 3rd". This module
puts a thin, general layer around those rules:

1. **Normalization** of shorthand the rules do not know: visit words from `vocabulary.VISIT_WORDS` ("adm",
   "hospitalization", "ED visit"), numeric ordinals ("1st", "2nd"), "prev"/"recent" forms, compact periods
   ("30d", "3 mo", "2 yrs", "6wk"), and two-digit years, read in the century that puts the date nearest before
   the time anchor (a clinician in 2146 writing "8/11/46" means 2146).
2. **The rules** of `parse_temporal_cues` (dates and ranges with since/before/between, relative periods, visit
   ordinals, direction words).
3. **dateparser's `search_dates`** over what the rules left, relative to the time anchor, for explicit dates in
   any other written form ("March 3rd", "3 Mar", "the 12th of March"); its hits become windows at the phrase's own
   granularity (a day, or a month when no day is written). Weekday names and bare numbers are not dates here
   ("sat" is saturation, "10014354" a patient id).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta

from medalign_rag.dates import add_months
from medalign_rag.retrieval.time_cues import (
    _AFTER,
    _BEFORE,
    EARLIEST,
    LATEST,
    DateWindow,
    TemporalCues,
    parse_temporal_cues,
)
from medalign_rag.records.model import EventKind
from medalign_rag.retrieval.vocabulary import (
    UNPLACED_ADMISSION,
    UNQUALIFIED_DISCHARGE,
    VISIT_WORDS,
    kinds_named,
    patient_pattern,
)

_ORDINALS = {"1st": "first", "2nd": "second", "3rd": "third", "4th": "fourth"}
# "#1 icu adm", "the #2 hosp", "value #2": a number sign before a small number is an ordinal, as "1st" is, unless it
# numbers a concept ("Chest Tube #1"): see normalize_shorthand's `numbered_words`.
_NUMBER_SIGN_ORDINAL = re.compile(r"(?<![\w#])#\s*([1-4])(?![\d.,/:])")
_WORD_BEFORE = re.compile(r"([a-z][a-z0-9]*)\W*$", re.IGNORECASE)
# "the second value", "value #2": the second in time from the start, so read oldest first; "second to last" is
# counted from the end and reads newest first through its "last"
_SECOND_FROM_START = re.compile(
    r"\bsecond\b(?!\s*(?:-\s*)?(?:to\s*(?:-\s*)?(?:the\s+)?)?(?:last|latest|most\s+recent)\b)")
_SHORTHAND = [
    (re.compile(r"\b(\d+)\s*(?:d|dys?)\b"), r"\1 days"),
    (re.compile(r"\b(\d+)\s*(?:wks?|w)\b"), r"\1 weeks"),
    (re.compile(r"\b(\d+)\s*(?:mos?|mths?|mnths?)\b"), r"\1 months"),
    (re.compile(r"\b(\d+)\s*(?:yrs?|y)\b"), r"\1 years"),
    (re.compile(r"\bprev\b|\bpreceding\b"), "previous"),
    (re.compile(r"\bmost\s+recently\b|\bmost\s+rec\b"), "most recent"),
    (re.compile(r"\bd/?c(?:'?e?d)?\b"), "discharge"),
    # a discharge or an admission of no named kind of visit is the hospital's (vocabulary.default_visit_readings)
    (UNQUALIFIED_DISCHARGE, "hospital discharge"),
    (UNPLACED_ADMISSION, r"\g<0> to the hospital"),
    (re.compile(r"\b(this|current|present)\s+(hospital visit|icu stay|visit|stay)\b"), r"last \2"),
    (re.compile(r"\bsince\s+(?:the\s+)?(?:last\s+)?hospital visit\b"), "during the last hospital visit"),
]
_VISIT_PATTERN = re.compile(  # not after an apostrophe: "dc'ed" holds no "ED"
    r"(?<!['\u2019])\b(" + "|".join(re.escape(word) for word in sorted(VISIT_WORDS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE)
_CONTRACTION = re.compile(r"\b(what|when|where|who|how|that|it|there|here)'s\b", re.IGNORECASE)
_SHORT_YEAR_DATE = re.compile(r"\b(?P<m>[01]?\d)/(?P<d>[0-3]?\d)/(?P<y>\d{2})\b")
_WEEKDAY = re.compile(r"^(?:on\s+)?(?:mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun)(?:day)?\.?$", re.IGNORECASE)
_NUMERIC_DATE = re.compile(r"\b\d{1,2}/\d{1,2}/\d{2,4}\b|\b\d{1,2}/\d{4}\b|\b\d{4}-\d\d(?:-\d\d)?\b")
_HAS_DAY = re.compile(r"\b[0-3]?\d(?:st|nd|rd|th)?\b")
_MONTH_WORD = re.compile(r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\b", re.IGNORECASE)


def _century_near(two_digits: int, anchor: datetime | None) -> int:
    """The four-digit year ending in `two_digits` nearest before the anchor (or this century without one)."""
    reference = anchor.year if anchor else datetime.now().year
    year = reference - reference % 100 + two_digits
    return year - 100 if year > reference else year


def _number_sign_ordinals(text: str, numbered_words: frozenset[str]) -> str:
    """"#1" / "#2" read as "first" / "second", except right after a word that numbers this patient's concepts
    ("chest tube #1" when a concept is named "Chest Tube #1"): there the number is part of the name."""
    def ordinal(match: re.Match[str]) -> str:
        before = _WORD_BEFORE.search(text[:match.start()])
        word = before.group(1).lower() if before else ""
        if word and (word in numbered_words or word.rstrip("s") in numbered_words or word == "patient"):
            return match.group(0)  # part of a name, or a patient's number ("pt #3")
        ordinal_word = _ORDINALS[match.group(1) + ("st", "nd", "rd", "th")[int(match.group(1)) - 1]]
        glued = text[match.end():match.end() + 1].isalpha()  # "#1icu" -> "first icu"
        return ordinal_word + " " if glued else ordinal_word
    return _NUMBER_SIGN_ORDINAL.sub(ordinal, text)


def normalize_shorthand(question: str, time_anchor: datetime | None,
                        numbered_words: frozenset[str] = frozenset()) -> str:
    """Rewrite clinicians' shorthand for visits, ordinals, periods and two-digit years into plain forms.
    `numbered_words`: lower-case words that a number sign follows in this patient's concept names ("tube" of
    "Chest Tube #1"); "#1" after one of them stays part of the name instead of reading as "first"."""
    text = patient_pattern().sub("patient", question)
    text = _number_sign_ordinals(text, numbered_words)
    text = _CONTRACTION.sub(r"\1 is", text)  # "what's the" is "what is the", not a possessive
    text = re.sub(r"(\d)'s\b", r"\1", text)  # "patient 10014354's weight"
    text = _VISIT_PATTERN.sub(lambda m: VISIT_WORDS[m.group(1).lower()], text)
    # "1st adm" is an ordinal, "Mar 3rd" / "the 3rd of March" a date: only the former is rewritten
    text = re.sub(r"\b(1st|2nd|3rd|4th)\b(?!\s+of\b)",
                  lambda m: _ORDINALS[m.group(1).lower()]
                  if not _MONTH_WORD.search(text[max(0, m.start() - 6):m.start()]) else m.group(1),
                  text, flags=re.IGNORECASE)
    text = _SHORT_YEAR_DATE.sub(
        lambda m: f"{m['m']}/{m['d']}/{_century_near(int(m['y']), time_anchor)}", text)
    lowered = text.lower()
    about_drugs = EventKind.drug in kinds_named(lowered)  # "d/c" of a drug is its discontinuation, not a discharge
    for pattern, replacement in _SHORTHAND:
        if about_drugs and "discharge" in replacement:
            continue
        lowered = pattern.sub(replacement, lowered)
    # "hospital hospital visit" after replacing "hospital admission" inside a longer phrase
    return re.sub(r"\bhospital\s+hospital\b", "hospital", lowered)


def _blank(text: str, phrases: tuple[str, ...]) -> str:
    for phrase in phrases:
        if phrase:
            text = text.replace(phrase, " " * len(phrase))
    return text


def _library_windows(text: str, time_anchor: datetime | None) -> list[DateWindow]:
    """Dates dateparser finds in `text` that the rules did not, as day or month windows."""
    if not re.search(r"\d", text) and not _MONTH_WORD.search(text):
        return []  # nothing date-like left: skip the library (it is the slow part)
    from dateparser.search import search_dates

    settings = {"PREFER_DATES_FROM": "past", "RETURN_AS_TIMEZONE_AWARE": False, "DATE_ORDER": "MDY",
                "REQUIRE_PARTS": ["month"], "STRICT_PARSING": False}
    if time_anchor is not None:
        settings["RELATIVE_BASE"] = time_anchor
    try:
        found = search_dates(text, languages=["en"], settings=settings) or []
    except Exception:  # the library raises assorted errors on odd input; a cue we cannot read is no cue
        return []
    windows: list[DateWindow] = []
    for phrase, moment in found:
        bare = phrase.strip()
        if _WEEKDAY.match(bare) or not (_MONTH_WORD.search(bare) or _NUMERIC_DATE.search(bare)):
            continue
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        without_month = _MONTH_WORD.sub(" ", bare)
        has_day = bool(_HAS_DAY.search(re.sub(r"\b\d{4}\b", " ", without_month)))
        if has_day:
            begin, end = start, start + timedelta(days=1)
        else:
            begin = start.replace(day=1)
            end = add_months(begin, 1)
        before = text[: text.find(phrase)].rstrip() + " "
        if _AFTER.search(before[-24:]):
            end = LATEST
        elif _BEFORE.search(before[-24:]):
            begin, end = EARLIEST, begin
        windows.append(DateWindow(begin, end, bare))
    return windows


def parse_cues(question: str, time_anchor: datetime | None,
               numbered_words: frozenset[str] = frozenset()) -> TemporalCues:
    """Time cues of `question`, written as the benchmark writes or as clinicians type (`numbered_words`: see
    normalize_shorthand)."""
    normalized = normalize_shorthand(question, time_anchor, numbered_words)
    cues = parse_temporal_cues(normalized, time_anchor)
    if cues.direction is None:  # "value #2", "the 2nd value": counted from the start
        second = _SECOND_FROM_START.search(_blank(normalized, cues.matched))
        if second:
            cues = replace(cues, direction="first", matched=cues.matched + ("second",),
                           content_query=re.sub(r"\s+", " ", _SECOND_FROM_START.sub(" ", cues.content_query)).strip())
    remaining = _blank(normalized, cues.matched)
    extra = _library_windows(remaining, time_anchor)
    if not extra:
        return cues
    return replace(cues, windows=cues.windows + tuple(extra), matched=cues.matched + tuple(w.text for w in extra),
                   content_query=_blank(cues.content_query, tuple(w.text for w in extra)).strip())
