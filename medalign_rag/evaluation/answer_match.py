"""Does a free-text model answer state FHIR-AgentBench's gold answer?

FHIR-AgentBench's `true_answer` is a list of result rows from a SQL query (`[['2133-12-31 02:00:00']]`, `[[1]]`,
`[]`, `[['Aspirin'], ['Heparin']]`...). A model answers in prose, so exact string comparison would score almost
nothing. We classify the gold answer once (`normalize_gold`) and then look for that value in the prose with
lenient but kind-aware rules (`answer_matches`):

* yes/no      -> the answer starts with a yes word or a no word;
* number      -> some number in the text (dates and times removed first) is within 1% or 0.01 of the gold value;
* date/time   -> some date in the text (ISO, M/D/Y, "December 31, 2133", "31 Dec 2133") is the gold day and, when
                 the gold has a time of day, a time written next to it is the gold hour:minute;
* text        -> every gold string appears (case-, whitespace- and punctuation-insensitive, whole words);
* none        -> the answer says nothing was found ("no record", "not found", "none"...).

Several rows mean a set: every row's value has to be there.

That is the *lenient* matcher (`answer_matches`): any number anywhere in the text can match, and without a
template a bare 0/1 is read as yes/no or as a count. `answer_matches_strict` is the one to report: it needs the
question's template (or wording), reads a 0/1 gold answer as a count or as yes/no but not both, accepts a value
only when it is the answer's claim (the first number or date it states; an answer that opens with "No"/"None"
claims nothing/zero), and an empty gold answer needs an explicit "none/not found". `ANSWER_MATCHERS` names both.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import Enum
from typing import Any, Iterable, Sequence

from medalign_rag.errors import MedalignError
from medalign_rag.dates import MONTHS

NUMBER_RELATIVE_TOLERANCE = 0.01
NUMBER_ABSOLUTE_TOLERANCE = 0.01


class AnswerKind(str, Enum):
    yes_no = "yes_no"
    number = "number"
    datetime = "datetime"  # a day and a time of day
    date = "date"
    text = "text"
    none = "none"  # nothing found: `[]` or only NULLs
    mixed = "mixed"  # rows of different kinds; each row is matched by its own kind


GoldValue = float | datetime | date | str


@dataclass(frozen=True)
class NormalizedAnswer:
    """The gold answer as typed values. For `yes_no`, `values` is `(True,)` or `(False,)`."""

    kind: AnswerKind
    values: tuple[GoldValue | bool, ...]
    value_kinds: tuple[AnswerKind, ...]
    # A bare 0/1 without a question or template could be "no"/"yes" or a count; then both readings are accepted.
    also_count: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Parsing and classifying the gold rows

# numpy prints 2-D arrays without commas between rows: "[[115.8]\n [117.7]]"; some dev.csv answers are written so.
_NUMPY_ROW_BREAK = re.compile(r"\]\s*\n\s*\[")


def parse_true_answer(text: str, *, path: str | None = None, line: int | None = None) -> list[list[Any]]:
    """Parse a `true_answer` cell (Python literal or numpy's print of a 2-D array) into a list of rows."""
    source = text.strip()
    candidates = [source, _NUMPY_ROW_BREAK.sub("], [", source)]
    for candidate in candidates:
        try:
            value = ast.literal_eval(candidate)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, tuple)):
            return [list(row) if isinstance(row, (list, tuple)) else [row] for row in value]
    raise MedalignError(f"true_answer {text[:80]!r} is not a list of rows", path=path, line=line)


_ISO_DATETIME = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}$")
_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")

# Templates (dev.csv's `template` column) that ask a yes/no question; every other template that yields 0/1 counts.
_YES_NO_TEMPLATE = re.compile(r"^\s*(?:has_verb|has|have|had|is|are|was|were|did|does|do)\b", re.IGNORECASE)
# Without a template, the question's wording decides: an auxiliary verb first ("Has ...", "Was the ... less
# than ...?"), after an opening clause ("Since 2100, has ...", "In 07/2178 did ...") or "if/whether" asks yes/no;
# anything else (How many, Count, What was the total ...) asks for a number.
_AUX = r"(?:has|have|had|is|are|was|were|did|does|do)\b"
_YES_NO_QUESTION = re.compile(
    r"^\W*(?:[^,?]{0,80},\s*)?" + _AUX
    + r"|^\W*(?:in|since|during|on|before|after|until)\s[^?,]{0,40}?\s" + _AUX
    + r"|\b(?:if|whether)\b",
    re.IGNORECASE,
)
_COUNT_WORDING = re.compile(r"\bhow (?:many|much|often|frequently)\b|^\W*count\b|\bnumber of\b", re.IGNORECASE)


def _classify_value(value: Any) -> tuple[AnswerKind, GoldValue | bool] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return AnswerKind.yes_no, value
    if isinstance(value, (int, float)):
        if value != value:  # NaN is SQL's NULL once it went through pandas
            return None
        return AnswerKind.number, float(value)
    text = str(value).strip()
    if not text or text.lower() in {"none", "null", "nan"}:
        return None
    if _ISO_DATETIME.match(text):
        return AnswerKind.datetime, datetime.fromisoformat(text.replace("T", " "))
    if _ISO_DATE.match(text):
        return AnswerKind.date, date.fromisoformat(text)
    if _PLAIN_NUMBER.match(text):
        return AnswerKind.number, float(text)
    return AnswerKind.text, text


def normalize_gold(
    gold_rows: Sequence[Sequence[Any]] | str,
    *,
    question: str | None = None,
    template: str | None = None,
) -> NormalizedAnswer:
    """Classify gold rows (or the raw `true_answer` text) into an answer kind with typed values.

    `template` (FHIR-AgentBench's question template) or else `question` decides whether a single 0/1 means
    no/yes or is a count; with neither, both readings are accepted.
    """
    rows = parse_true_answer(gold_rows) if isinstance(gold_rows, str) else gold_rows
    if not isinstance(rows, (list, tuple)):
        raise MedalignError(f"gold answer must be a list of rows, got {type(rows).__name__}")
    typed: list[tuple[AnswerKind, GoldValue | bool]] = []
    for row in rows:
        cells = row if isinstance(row, (list, tuple)) else [row]
        for cell in cells:
            classified = _classify_value(cell)
            if classified is not None:
                typed.append(classified)
    if not typed:
        return NormalizedAnswer(AnswerKind.none, (), ())

    if len(typed) == 1 and typed[0][0] in (AnswerKind.number, AnswerKind.yes_no):
        only_kind, only_value = typed[0]
        is_binary = only_kind is AnswerKind.yes_no or (
            only_value in (0.0, 1.0) and not _is_float_literal(rows)
        )
        if is_binary:
            if template is not None:
                reading = "yes_no" if _YES_NO_TEMPLATE.match(template) else "count"
            elif question is not None:
                asks_yes_no = _YES_NO_QUESTION.search(question) and not _COUNT_WORDING.search(question)
                reading = "yes_no" if asks_yes_no else "count"
            else:
                reading = "either"
            if reading != "count" or only_kind is AnswerKind.yes_no:
                return NormalizedAnswer(
                    AnswerKind.yes_no,
                    (bool(only_value),),
                    (AnswerKind.yes_no,),
                    also_count=reading == "either" and only_kind is AnswerKind.number,
                )

    kinds = tuple(kind for kind, _ in typed)
    overall = kinds[0] if len(set(kinds)) == 1 else AnswerKind.mixed
    return NormalizedAnswer(overall, tuple(value for _, value in typed), kinds)


def _is_float_literal(rows: Sequence[Sequence[Any]]) -> bool:
    """`[[1.]]` is a measured value, `[[1]]` is a flag or a count."""
    for row in rows:
        for cell in row if isinstance(row, (list, tuple)) else [row]:
            if isinstance(cell, float):
                return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Reading the prediction

_MONTH_NAME = r"(?P<month_name>" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_DATE_PATTERNS = [
    re.compile(r"(?<!\d)(?P<year>\d{4})[-/.](?P<month>\d{1,2})[-/.](?P<day>\d{1,2})(?!\d)"),
    re.compile(r"(?<!\d)(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4})(?!\d)"),
    re.compile(r"\b" + _MONTH_NAME + r"\s+" + _DAY + r",?\s+(?P<year>\d{4})(?!\d)", re.IGNORECASE),
    re.compile(r"(?<!\d)" + _DAY + r"(?:\s+of)?\s+" + _MONTH_NAME + r",?\s+(?P<year>\d{4})(?!\d)", re.IGNORECASE),
]
_TIME = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.\d+)?)?(?:\s*(?P<ampm>[ap])\.?m\b\.?)?"
# A time written right after a date ("2133-12-31 02:00", "... 2133 at 2:00 AM") or right before it ("02:00 on ...").
_TIME_AFTER = re.compile(r"^(?:\s*(?:T|,|at|@|,\s*at)?\s*)" + _TIME, re.IGNORECASE)
_TIME_BEFORE = re.compile(_TIME + r"\s*(?:hours?|hrs?|h)?\s*(?:,|on|of)?\s*$", re.IGNORECASE)
_TIME_ANYWHERE = re.compile(r"(?<![\d:])" + _TIME + r"(?![\d:])", re.IGNORECASE)


@dataclass(frozen=True)
class _DateMention:
    day: date
    at: time | None
    has_seconds: bool
    span: tuple[int, int]  # including the adjacent time, so numbers inside it are not read as values


def _time_from(match: re.Match[str]) -> tuple[time, bool] | None:
    hour, minute = int(match["hour"]), int(match["minute"])
    second = int(match["second"]) if match["second"] else 0
    if match["ampm"]:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if match["ampm"].lower() == "p" else 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    return time(hour, minute, second), match["second"] is not None


def _date_mentions(text: str) -> list[_DateMention]:
    mentions: list[_DateMention] = []
    taken: list[tuple[int, int]] = []
    for pattern in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                continue
            groups = match.groupdict()
            month = MONTHS[groups["month_name"].lower()] if groups.get("month_name") else int(groups["month"])
            try:
                day = date(int(match["year"]), month, int(match["day"]))
            except ValueError:
                continue
            at: time | None = None
            has_seconds = False
            after = _TIME_AFTER.match(text[end : end + 30])
            window_start = max(0, start - 30)
            before = _TIME_BEFORE.search(text[window_start:start])
            if after and (parsed := _time_from(after)):
                at, has_seconds = parsed
                end += after.end()
            elif before and (parsed := _time_from(before)):
                before_start = window_start + before.start()
                # "2114-06-19 08:00, 2114-06-20": that 08:00 belongs to the first date, not to this one.
                if not any(before_start < t_end and t_start < start for t_start, t_end in taken):
                    at, has_seconds = parsed
                    start = before_start
            taken.append((start, end))
            mentions.append(_DateMention(day, at, has_seconds, (start, end)))
    return mentions


_WORD_NUMBERS = {
    word: float(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
} | {"once": 1.0, "twice": 2.0, "thrice": 3.0, "single": 1.0}
# A sign counts only when it does not join two tokens ("1-2" is a range, " -14" is negative).
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212]?)"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<exp>[-+]?\d+))?"
)
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", re.IGNORECASE)


def _blank_spans(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for start, end in spans:
        for index in range(start, end):
            chars[index] = " "
    return "".join(chars)


def _numbers_in(text: str) -> list[float]:
    """Every number the text states, with dates and clock times blanked out first."""
    blanked = _blank_spans(text, [m.span for m in _date_mentions(text)])
    blanked = _blank_spans(blanked, [m.span() for m in _TIME_ANYWHERE.finditer(blanked)])
    numbers: list[float] = []
    for match in _NUMBER.finditer(blanked):
        sign = -1.0 if match["sign"] in ("-", "\u2212") else 1.0
        digits = match["digits"]
        exponent = int(match["exp"]) if match["exp"] else 0
        numbers.append(sign * float(digits.replace(",", "")) * 10.0**exponent)
        if "," in digits:  # "67,420" might also be the list "67, 420"
            numbers.extend(sign * float(part) for part in digits.split(",") if part)
    numbers.extend(_WORD_NUMBERS[m.group(1).lower()] for m in _WORD_NUMBER.finditer(blanked))
    return numbers


def _numbers_close(predicted: float, gold: float) -> bool:
    return abs(predicted - gold) <= max(NUMBER_ABSOLUTE_TOLERANCE, NUMBER_RELATIVE_TOLERANCE * abs(gold))


_LEADING_NOISE = re.compile(r"^[\s*_#>\-\"'`(\[]*(?:(?:final\s+)?answer\s*[:\-]\s*[\s*_\"'`]*)?", re.IGNORECASE)
_YES_WORDS = {"yes", "yeah", "yep", "correct", "true", "affirmative", "indeed"}
_NO_WORDS = {"no", "nope", "false", "negative", "never", "none", "not"}


def _leading_word(prediction: str) -> str:
    stripped = _LEADING_NOISE.sub("", prediction)
    match = re.match(r"[A-Za-z]+", stripped)
    return match.group(0).lower() if match else ""


_NOTHING_FOUND = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"^\W*(?:no|none|nothing|n/?a|null|nil|unknown)\b",
        r"\bnot (?:been )?(?:found|available|recorded|documented|reported|present|listed|measured|performed|"
        r"prescribed|administered|given|identified|determined)\b",
        r"\bno (?:[\w/-]+\s+){0,4}?(?:records?|data|results?|entries|entry|values?|measurements?|information|"
        r"evidence|documentation|prescriptions?|tests?|events?|visits?|admissions?|stays?|outputs?|orders?|"
        r"match(?:es|ing)?|mentions?|such|recorded|documented|available|found)\b",
        r"\b(?:could|can|did|was|were|is|are)(?: ?not|n't) (?:find|locate|identify|be found|be determined|"
        r"be located|retrieve|determine)\b",
        r"\bunable to (?:find|locate|identify|determine|retrieve)\b",
        r"\bthere (?:is|are|was|were)(?: ?not|n't|) (?:no|any)\b",
        r"\b(?:does|did|do|has|have|had)(?: ?not|n't) (?:have|contain|include|show|receive|undergo|get|record)\b",
        r"\b(?:none|nothing|never)\b",
        r"\binsufficient (?:data|information)\b",
    )
]


def _says_nothing_found(prediction: str) -> bool:
    return any(pattern.search(prediction) for pattern in _NOTHING_FOUND)


def canonical_text(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form.

    'Ipratropium-Albuterol  Neb' and 'ipratropium albuterol neb' give the same text.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # a dot is punctuation unless it is a decimal point
    text = re.sub(r"[^\w%+.]+|_", " ", text)
    return " ".join(text.split())


# One-letter codes the MIMIC tables use for gender.
_TEXT_SYNONYMS = {"m": ("m", "male"), "f": ("f", "female")}


def mentions_text(canonical_prediction: str, gold: str) -> bool:
    """Whether `gold` occurs as whole words in `canonical_prediction` (already `canonical_text`)."""
    target = canonical_text(gold)
    if not target:
        return True
    for variant in _TEXT_SYNONYMS.get(target, (target,)):
        if re.search(r"(?<![\w%+])" + re.escape(variant) + r"(?![\w%+])", canonical_prediction):
            return True
    return False


def _mentions_datetime(mentions: list[_DateMention], gold: datetime | date, require_time: bool) -> bool:
    if isinstance(gold, datetime):
        gold_day, gold_time = gold.date(), gold.time()
    else:
        gold_day, gold_time = gold, None
    for mention in mentions:
        if mention.day != gold_day:
            continue
        if gold_time is None:
            return True
        if mention.at is None:
            # A gold time of exactly midnight is usually "the day" (dates stored as timestamps).
            if not require_time or gold_time == time(0, 0):
                return True
            continue
        same_minute = (mention.at.hour, mention.at.minute) == (gold_time.hour, gold_time.minute)
        if same_minute and (not mention.has_seconds or mention.at.second == gold_time.second):
            return True
    return False


def answer_matches(
    prediction: str,
    gold_rows: Sequence[Sequence[Any]] | str | NormalizedAnswer,
    *,
    question: str | None = None,
    template: str | None = None,
    require_time: bool = True,
) -> bool:
    """True when `prediction` states the gold answer (see the module docstring for the rules per kind).

    `require_time`: when the gold is a date with a time of day (not midnight), the answer has to give that time.
    """
    gold = gold_rows if isinstance(gold_rows, NormalizedAnswer) else normalize_gold(
        gold_rows, question=question, template=template
    )
    if not isinstance(prediction, str):
        raise MedalignError(f"prediction must be text, got {type(prediction).__name__}")
    prediction = unicodedata.normalize("NFKC", prediction)

    if gold.kind is AnswerKind.none:
        return _says_nothing_found(prediction)

    if gold.kind is AnswerKind.yes_no:
        expected = bool(gold.values[0])
        word = _leading_word(prediction)
        if word in (_YES_WORDS if expected else _NO_WORDS):
            return True
        if gold.also_count:
            return _matches_number(prediction, 1.0 if expected else 0.0)
        return False

    mentions = _date_mentions(prediction)
    canonical_prediction = canonical_text(prediction)
    numbers: list[float] | None = None
    for kind, value in zip(gold.value_kinds, gold.values):
        if kind in (AnswerKind.datetime, AnswerKind.date):
            assert isinstance(value, (datetime, date))
            if not _mentions_datetime(mentions, value, require_time):
                return False
        elif kind is AnswerKind.number:
            assert isinstance(value, float)
            if numbers is None:
                numbers = _numbers_in(prediction)
            if not any(_numbers_close(found, value) for found in numbers):
                if not (value == 0.0 and _says_nothing_found(prediction)):
                    return False
        elif kind is AnswerKind.yes_no:
            if _leading_word(prediction) not in (_YES_WORDS if value else _NO_WORDS):
                return False
        else:
            if not mentions_text(canonical_prediction, str(value)):
                return False
    return True


def _matches_number(prediction: str, gold: float) -> bool:
    if any(_numbers_close(found, gold) for found in _numbers_in(prediction)):
        return True
    return gold == 0.0 and _says_nothing_found(prediction)


# ---------------------------------------------------------------------------------------------------------------
# Question forms and the strict matcher

_COUNT_TEMPLATE = re.compile(r"^\W*count\b|\bnumber of\b|\bhow (?:many|often|frequently)\b", re.IGNORECASE)
# Values the record does not hold as such: sums, durations, differences, aggregates.
_COMPUTED = re.compile(
    r"\btotal (?:amount|volume)\b|\blength of\b|\bchange in\b|\[agg_function\]|\[unit_average\]|\bcalculate\b"
    r"|\baverage\b|\bmean\b|\bdifference\b|\bhow long\b|\b(?:maximum|minimum|max|min)\b",
    re.IGNORECASE,
)
QuestionForm = str  # "yes_no" | "count" | "computed" | "lookup" | "unknown"


def question_form(template: str | None, question: str | None = None) -> QuestionForm:
    """What kind of answer a FHIR-AgentBench question asks for, from its template (else its wording).

    "yes_no" (Has/Is/Did ...), "count" (Count the number of ..., how many), "computed" (totals, lengths of stay,
    changes, aggregates: values the record does not state), "lookup" (a date, name or measured value the record
    holds), "unknown" with neither template nor question.
    """
    if template:
        text = template
        if _YES_NO_TEMPLATE.match(text):
            return "yes_no"
    elif question:
        text = question
        if _YES_NO_QUESTION.search(text) and not _COUNT_WORDING.search(text):
            return "yes_no"
    else:
        return "unknown"
    if _COUNT_TEMPLATE.search(text):
        return "count"
    if _COMPUTED.search(text):
        return "computed"
    return "lookup"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[])|\n")
# A number followed by one of these is a measurement ("1 mg"), not a count.
_UNIT_AFTER = re.compile(
    r"^\s*(?:mg|mcg|µg|ug|g|kg|lbs?|ml|l|cc|units?|u|iu|%|mmhg|meq|mmol|mol|cm|mm|m|in|bpm|mg/dl|g/dl|tabs?|"
    r"tablets?|caps?|puffs?|drops?|days?|hours?|hrs?|minutes?|mins?|years?|weeks?|months?)\b",
    re.IGNORECASE,
)


def _first_sentence(text: str) -> str:
    stripped = text.strip()
    parts = _SENTENCE_END.split(stripped, maxsplit=1)
    return parts[0] if parts else stripped


def _claimed_numbers(text: str, *, counts_only: bool) -> list[float]:
    """Numbers the text states, in order of appearance (dates and clock times blanked; words like "twice" too)."""
    blanked = _blank_spans(text, [m.span for m in _date_mentions(text)])
    blanked = _blank_spans(blanked, [m.span() for m in _TIME_ANYWHERE.finditer(blanked)])
    found: list[tuple[int, float]] = []
    for match in _NUMBER.finditer(blanked):
        if counts_only and _UNIT_AFTER.match(blanked[match.end():]):
            continue
        sign = -1.0 if match["sign"] in ("-", "\u2212") else 1.0
        exponent = int(match["exp"]) if match["exp"] else 0
        found.append((match.start(), sign * float(match["digits"].replace(",", "")) * 10.0**exponent))
    for match in _WORD_NUMBER.finditer(blanked):
        if counts_only and _UNIT_AFTER.match(blanked[match.end():]):
            continue
        found.append((match.start(), _WORD_NUMBERS[match.group(1).lower()]))
    return [value for _, value in sorted(found)]


def _negative_opening(prediction: str) -> bool:
    return _leading_word(prediction) in _NO_WORDS or _says_nothing_found(_first_sentence(prediction))


def answer_matches_strict(
    prediction: str,
    gold_rows: Sequence[Sequence[Any]] | str,
    *,
    question: str | None = None,
    template: str | None = None,
    require_time: bool = True,
) -> bool:
    """True when the answer's claim is the gold answer (see the module docstring); template-aware.

    * empty gold (`[]`, `[[None]]`): the first sentence says nothing was found;
    * yes/no question: the answer opens with the right yes or no word (a number does not count);
    * count question: an answer opening with no/none claims 0; else its first number that is not a
      measurement ("1 mg" is a dose, not a count) is the claim;
    * one value: the first number (or date) the answer states is the claim; an answer opening with "no" or
      "none" claims nothing;
    * several values (a set): every value is stated and the answer does not open with "no"/"none".
    """
    if template is None and question is None:
        raise MedalignError("strict answer matching needs the question's template or wording")
    if not isinstance(prediction, str):
        raise MedalignError(f"prediction must be text, got {type(prediction).__name__}")
    prediction = unicodedata.normalize("NFKC", prediction)
    form = question_form(template, question)
    gold = normalize_gold(gold_rows, question=question, template=template)

    if gold.kind is AnswerKind.none:
        return _says_nothing_found(_first_sentence(prediction))
    if gold.kind is AnswerKind.yes_no:
        return _leading_word(prediction) in (_YES_WORDS if gold.values[0] else _NO_WORDS)
    negative = _negative_opening(prediction)

    if form == "count" and gold.kind is AnswerKind.number and len(gold.values) == 1:
        expected = float(gold.values[0])
        if negative:
            return expected == 0.0
        claimed = _claimed_numbers(prediction, counts_only=True)
        return bool(claimed) and _numbers_close(claimed[0], expected)

    if negative:
        return False
    if len(gold.values) == 1:
        kind, value = gold.value_kinds[0], gold.values[0]
        if kind is AnswerKind.number:
            claimed = _claimed_numbers(prediction, counts_only=False)
            return bool(claimed) and _numbers_close(claimed[0], float(value))
        if kind in (AnswerKind.datetime, AnswerKind.date):
            mentions = sorted(_date_mentions(prediction), key=lambda m: m.span[0])
            return bool(mentions) and _mentions_datetime(mentions[:1], value, require_time)
    return answer_matches(prediction, gold, require_time=require_time)


def answer_matches_lenient(
    prediction: str,
    gold_rows: Sequence[Sequence[Any]] | str,
    *,
    question: str | None = None,
    template: str | None = None,
    require_time: bool = True,
) -> bool:
    """The lenient matcher under its variant name (any number anywhere may match; see `answer_matches`)."""
    return answer_matches(prediction, gold_rows, question=question, template=template, require_time=require_time)


ANSWER_MATCHERS = {"strict": answer_matches_strict, "lenient": answer_matches_lenient}
