"""Time cues of an instruction: explicit dates and ranges, periods relative to the time anchor, visit ordinals and
direction words, parsed by a small rule set (no model).

Relative periods follow the calendar conventions of EHRSQL / FHIR-AgentBench, the source of most such phrasings:
"this year" is the anchor's calendar year, "last month" / "previous month" the calendar month before the anchor's,
"since 15 months ago" and "in the last 30 days" are rolling windows ending at the anchor. Without a time anchor,
relative periods are ignored (they cannot be resolved); dates and visit ordinals still apply.
"""

from __future__ import annotations

import re
from calendar import monthrange
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from medalign_rag.dates import MONTHS, add_months

Direction = Literal["recent", "first"]
VisitKind = Literal["hospital", "icu", "emergency", "office", "any"]
VisitOrdinal = Literal["first", "last"]

EARLIEST = datetime(1, 1, 1)
LATEST = datetime(9999, 12, 31, 23, 59, 59)


@dataclass(frozen=True)
class DateWindow:
    """A half-open period [start, end) the instruction points at; `text` is the phrase it came from."""

    start: datetime
    end: datetime
    text: str


@dataclass(frozen=True)
class VisitCue:
    """"the first hospital visit", "the last ICU stay": resolved against the patient's visits at query time."""

    ordinal: VisitOrdinal
    kind: VisitKind
    text: str


@dataclass(frozen=True)
class TemporalCues:
    windows: tuple[DateWindow, ...] = ()
    visits: tuple[VisitCue, ...] = ()
    direction: Direction | None = None
    visit_kind: VisitKind | None = None  # a kind of visit named without an ordinal ("the office visit on <date>")
    content_query: str = ""  # the question with every time cue removed: what the answer is *about*
    matched: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.windows or self.visits or self.direction)


# -- the rule set -----------------------------------------------------------------------------------------------

_MONTH_NAME = r"(?P<mname>" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_YEAR = r"(?P<year>1[89]\d\d|2[0-2]\d\d|this year|last year|previous year)"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"

# Date expressions, most specific first; each yields (start, end) at its own granularity.
_DATE_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("day", re.compile(r"\b(?P<year>\d{4})-(?P<month>[01]\d)-(?P<day>[0-3]\d)(?:[ t]\d\d:\d\d(?::\d\d)?)?\b")),
    ("day", re.compile(r"\b(?P<month>[01]?\d)/(?P<day>[0-3]?\d)/" + _YEAR + r"\b")),
    ("month", re.compile(r"\b(?P<month>[01]?\d)/" + _YEAR + r"\b")),
    ("day", re.compile(r"\b" + _MONTH_NAME + r"\s+" + _DAY + r",?\s+" + _YEAR + r"\b")),
    ("day", re.compile(r"\b" + _DAY + r"\s+(?:of\s+)?" + _MONTH_NAME + r",?\s+" + _YEAR + r"\b")),
    ("month", re.compile(r"\b" + _MONTH_NAME + r",?\s+(?:of\s+)?" + _YEAR + r"\b")),
    # a bare year only after a preposition, so quantities ("1000 ml") and ids are not read as years
    ("year", re.compile(r"\b(?:in|since|during|of|before|after|from|until|through|throughout|between|and|to)\s+"
                        r"(?P<year>1[89]\d\d|2[0-2]\d\d)\b")),
]

_UNIT = r"(?P<unit>day|week|month|year)s?"
_ROLLING = [
    re.compile(r"\bsince\s+(?P<n>\d+)\s+" + _UNIT + r"\s+ago\b"),
    re.compile(r"\b(?:(?:in|within|during|over|for|from)\s+)?(?:the\s+)?(?:last|past|previous|prior)\s+(?P<n>\d+)\s+"
               + _UNIT + r"\b"),
]
_CALENDAR = re.compile(r"\b(?P<which>this|current|last|previous|past|prior)\s+(?P<unit>year|month|week)\b")
_DAY_WORD = re.compile(r"\b(?P<word>today|yesterday)\b")

_BEFORE = re.compile(r"\b(?:before|prior to|until|up to|by)\s+(?:the\s+)?$")
_AFTER = re.compile(r"\b(?:since|after|from|starting(?: on| in| from)?|beginning(?: on| in)?)\s+(?:the\s+)?$")
_RANGE_LINK = re.compile(r"^\s*(?:and|to|through|until|-)\s+(?:the\s+)?$")
_LINK_WORD = re.compile(r"(?:between|from|since|after|before|prior to|until|on|in|at|during|of)\s+(?:the\s+)?$")
_BETWEEN = re.compile(r"\b(?:between|from)\s+(?:the\s+)?$")

_ORDINAL_WORDS = r"(?P<ordinal>first|last|latest|most recent|current|initial|earliest|previous|prior)"
_KIND_WORDS = (r"(?P<kind>hospital|inpatient|icu|intensive care(?: unit)?|emergency(?: room| department)?|er|ed"
               r"|office|clinic|outpatient)")
_VISIT_NOUN = r"(?P<noun>visits?|encounters?|stays?|admissions?|hospitali[sz]ations?)"
_VISIT_ORDINAL = [
    # "the first stay of patient 10007928 in the icu", "the last stay in days of patient 1 in the icu"
    re.compile(r"\b" + _ORDINAL_WORDS + r"\s+(?P<noun>stay|visit|admission)\s+(?:\S+\s+){0,5}?in\s+(?:the\s+)?"
               + _KIND_WORDS + r"\b"),
    re.compile(r"\b" + _ORDINAL_WORDS + r"\s+(?:" + _KIND_WORDS + r"\s+)?" + _VISIT_NOUN + r"\b"),
]
_VISIT_KIND = re.compile(r"\b" + _KIND_WORDS + r"\s+" + _VISIT_NOUN + r"\b|\b(?P<adm>admission|hospitali[sz]ation)\b")

# Words of the asking, not of the answer: they match notes ("patient", "measured") rather than the facts asked
# about, so they are dropped from the content query that decides which chunks direction may reorder.
_QUESTION_WORDS = re.compile(
    r"\b(?:what|when|which|who|how|why|was|were|is|are|did|does|has|have|had|tell|show|give|provide|inform|list|"
    r"calculate|compute|count|please|could|can|you|me|the|a|an|of|for|to|in|on|at|by|via|and|or|it|its|their|"
    r"patient(?:'s|s)?|recorded|documented|measured|value|values|result|results|level|levels|"
    r"time|times|date|reading|name|record|get|got|given|patient \d+|\d{6,})\b|[?.,;:!]")

_RECENT = re.compile(r"\b(?:most recent(?:ly)?|latest|last|current(?:ly)?|newest|recent(?:ly)?)\b")
_FIRST = re.compile(r"\b(?:first|earliest|initial(?:ly)?|oldest)\b")


def _kind_of(word: str | None, noun: str | None = None) -> VisitKind:
    word = (word or "").strip()
    if word in ("icu",) or word.startswith("intensive"):
        return "icu"
    if word.startswith("emergency") or word in ("er", "ed"):
        return "emergency"
    if word in ("office", "clinic", "outpatient"):
        return "office"
    if word in ("hospital", "inpatient") or (noun or "").startswith(("admission", "hospitali", "stay")):
        return "hospital"
    return "any"


def _day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _resolve_year(text: str, anchor: datetime | None) -> int | None:
    if text == "this year":
        return anchor.year if anchor else None
    if text in ("last year", "previous year"):
        return anchor.year - 1 if anchor else None
    return int(text)


def _date_period(granularity: str, groups: dict[str, str | None],
                 anchor: datetime | None) -> tuple[datetime, datetime] | None:
    year = _resolve_year(groups["year"] or "", anchor)
    if year is None:
        return None
    try:
        if groups.get("mname"):
            month = MONTHS[groups["mname"]]
        else:
            month = int(groups.get("month") or 1)
        if granularity == "year":
            return datetime(year, 1, 1), datetime(year + 1, 1, 1)
        if granularity == "month":
            start = datetime(year, month, 1)
            return start, add_months(start, 1)
        start = datetime(year, month, int(groups["day"] or 1))
        return start, start + timedelta(days=1)
    except ValueError:  # 13/45/2020 and the like: not a date
        return None


def _subtract(anchor: datetime, n: int, unit: str) -> datetime:
    """`anchor` minus n units, as SQL date arithmetic does it (Mar 31 minus a month is the last day of Feb)."""
    if unit == "day":
        return anchor - timedelta(days=n)
    if unit == "week":
        return anchor - timedelta(weeks=n)
    months = n * (12 if unit == "year" else 1)
    first = add_months(anchor, -months)
    return anchor.replace(year=first.year, month=first.month,
                          day=min(anchor.day, monthrange(first.year, first.month)[1]))


def _calendar(which: str, unit: str, anchor: datetime) -> tuple[datetime, datetime]:
    if which == "past":  # "the past year" reads as the twelve months up to the anchor, not last calendar year
        return _subtract(anchor, 1, unit), LATEST
    back = 0 if which in ("this", "current") else 1
    if unit == "year":
        return datetime(anchor.year - back, 1, 1), datetime(anchor.year - back + 1, 1, 1)
    if unit == "month":
        start = add_months(anchor, -back)
        return start, add_months(start, 1)
    monday = _day_start(anchor) - timedelta(days=anchor.weekday() + 7 * back)
    return monday, monday + timedelta(days=7)


class _Text:
    """The lower-cased question with consumed cue phrases blanked out, so no phrase is read twice."""

    def __init__(self, question: str) -> None:
        self.text = question.lower()
        self.matched: list[str] = []

    def consume(self, start: int, end: int) -> str:
        phrase = self.text[start:end]
        self.text = self.text[:start] + " " * (end - start) + self.text[end:]
        self.matched.append(phrase.strip())
        return phrase.strip()


def parse_temporal_cues(question: str, time_anchor: datetime | None) -> TemporalCues:
    """The time cues of one instruction. Rules run from the most to the least specific and consume what they
    match: "the last hospital visit" is a visit ordinal, so its "last" is not read again as a direction."""
    text = _Text(question)
    windows: list[DateWindow] = []

    # 1. explicit dates, with "between A and B", "since A", "before A" read from the words around them
    found: list[tuple[int, int, datetime, datetime]] = []
    for granularity, pattern in _DATE_PATTERNS:
        for match in pattern.finditer(text.text):
            period = _date_period(granularity, match.groupdict(), time_anchor)
            if period is None:
                continue
            start, end = match.span("year") if granularity == "year" else match.span()
            found.append((start, end, *period))
            text.text = text.text[:start] + "\0" * (end - start) + text.text[end:]
    found.sort()
    original = question.lower()
    used: set[int] = set()
    for i, (start, end, begin, finish) in enumerate(found):
        if i in used:
            continue
        before = original[max(0, start - 24):start]
        phrase_start = start
        if i + 1 < len(found) and _BETWEEN.search(before) and _RANGE_LINK.match(original[end:found[i + 1][0]]):
            _, end, _, finish = found[i + 1]
            used.add(i + 1)
        elif _AFTER.search(before):
            finish = LATEST
        elif _BEFORE.search(before):
            begin, finish = EARLIEST, begin
        link = _LINK_WORD.search(before)
        if link:
            phrase_start = start - (len(before) - link.start())
        windows.append(DateWindow(begin, finish, original[phrase_start:end].strip()))
        text.text = text.text[:phrase_start] + " " * (end - phrase_start) + text.text[end:]
        text.matched.append(original[phrase_start:end].strip())
    text.text = text.text.replace("\0", " ")

    # 2. periods relative to the anchor
    for pattern in _ROLLING:
        for match in list(pattern.finditer(text.text)):
            phrase = text.consume(match.start(), match.end())
            if time_anchor is not None:
                begin = _subtract(time_anchor, int(match["n"]), match["unit"])
                windows.append(DateWindow(begin, LATEST, phrase))
    for match in list(_CALENDAR.finditer(text.text)):
        phrase = text.consume(match.start(), match.end())
        if time_anchor is not None:
            begin, finish = _calendar(match["which"], match["unit"], time_anchor)
            windows.append(DateWindow(begin, finish, phrase))
    for match in list(_DAY_WORD.finditer(text.text)):
        phrase = text.consume(match.start(), match.end())
        if time_anchor is not None:
            day = _day_start(time_anchor) - timedelta(days=1 if match["word"] == "yesterday" else 0)
            windows.append(DateWindow(day, day + timedelta(days=1), phrase))

    # 3. visit ordinals
    visits: list[VisitCue] = []
    for pattern in _VISIT_ORDINAL:
        for match in list(pattern.finditer(text.text)):
            ordinal: VisitOrdinal = "first" if match["ordinal"] in ("first", "initial", "earliest") else "last"
            phrase = text.consume(match.start(), match.end())
            visits.append(VisitCue(ordinal, _kind_of(match["kind"], match["noun"]), phrase))

    # 4. a kind of visit named without an ordinal (kept in the content query: it is what the answer is about)
    visit_kind: VisitKind | None = None
    kind_match = _VISIT_KIND.search(text.text)
    if kind_match:
        visit_kind = _kind_of(kind_match["kind"], kind_match["adm"] or kind_match["noun"])

    # 5. direction: whichever word comes first ("the last time ... first measured" is about the last time)
    direction: Direction | None = None
    recent, first = _RECENT.search(text.text), _FIRST.search(text.text)
    if recent or first:
        if recent and (not first or recent.start() < first.start()):
            direction = "recent"
            text.consume(recent.start(), recent.end())
        else:
            direction = "first"
            text.consume(first.start(), first.end())

    content = re.sub(r"\s+", " ", _QUESTION_WORDS.sub(" ", text.text)).strip()
    return TemporalCues(windows=tuple(windows), visits=tuple(visits), direction=direction, visit_kind=visit_kind,
                        content_query=content, matched=tuple(text.matched))
