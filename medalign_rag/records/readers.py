"""Read a patient's EHR XML in either MedAlign layout into a PatientRecord.

Two layouts exist (see docs/formats.md, section 1 and 2): the paper's `<record><visit><day>` markup with `[VOCAB/CODE] name value
unit` code lines, and the data release's `<eventstream><encounter><events><entry><event>` markup, which is also
what `serialize.write_release_xml` writes. `read_record` picks the layout from the root element.

The parser is pyexpat driven by hand rather than ElementTree because error messages must name the line of the
offending element, and ElementTree's C parser does not expose line numbers. It builds a light tree once; release
files of several MB read in well under a second.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from datetime import datetime
from pathlib import Path
from xml.parsers import expat

from medalign_rag.dates import naive_local
from medalign_rag.errors import MedalignError
from medalign_rag.records.model import (
    OMOP_TABLE_BY_KIND,
    Demographics,
    Encounter,
    Event,
    EventKind,
    PatientRecord,
    check_patient_id,
    kind_from_source_type,
)

__all__ = ["read_record", "parse_timestamp", "parse_code_line"]


# --------------------------------------------------------------------------------------------------- XML tree


class _Node:
    """One parsed element; a plain slotted class because a dataclass's default factories cost a third of parsing."""

    __slots__ = ("tag", "attrib", "line", "children", "text_parts")

    def __init__(self, tag: str, attrib: dict[str, str], line: int) -> None:
        self.tag = tag
        self.attrib = attrib
        self.line = line
        self.children: list[_Node] = []
        self.text_parts: list[str] = []

    @property
    def text(self) -> str:
        """Character data directly inside this element (not inside its children)."""
        return "".join(self.text_parts)

    def iter(self, tag: str):
        """This node and its descendants named `tag`, in document order."""
        stack = [self]
        while stack:
            node = stack.pop()
            if node.tag == tag:
                yield node
            stack.extend(reversed(node.children))


def _parse_tree(path: Path) -> _Node:
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.buffer_size = 1 << 16
    root: list[_Node] = []
    stack: list[_Node] = []

    def start(tag: str, attrib: dict[str, str]) -> None:
        node = _Node(tag, attrib, parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def data(text: str) -> None:
        if stack:
            stack[-1].text_parts.append(text)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    try:
        with open(path, "rb") as handle:
            parser.ParseFile(handle)
    except expat.ExpatError as exc:
        raise MedalignError(f"malformed XML: {expat.ErrorString(exc.code)} (column {exc.offset + 1})",
                            path=path, line=exc.lineno) from None
    except OSError as exc:
        raise MedalignError(f"cannot read EHR file: {exc.strerror or exc}", path=path) from None
    if not root:  # pragma: no cover - expat reports "no element found" first
        raise MedalignError("no XML element found", path=path)
    return root[0]


# ----------------------------------------------------------------------------------------------- timestamps

# Paper layout: "10/08/2018 08:05 PM", "10/08/2018 9:00 PM", "10/08/2018 20:00", "7/19/1966".
_US_FORMATS = (
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y",
)


@lru_cache(maxsize=8192)  # entries repeat timestamps a lot; datetimes are immutable, so sharing them is safe
def parse_timestamp(text: str) -> datetime | None:
    """Parse the timestamps either layout uses (ISO-like or US style); None if `text` is not one.

    A timestamp with a UTC offset keeps its wall-clock reading and drops the offset: the one rule for every
    timestamp input (medalign_rag.dates.naive_local, also applied by the record model's validators).
    """
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
        for fmt in _US_FORMATS:
            try:
                value = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        if value is None:
            return None
    return naive_local(value)


def _timestamp(node: _Node, attribute: str, path: Path, *, required: bool = True) -> datetime | None:
    raw = node.attrib.get(attribute)
    if raw is None or not raw.strip():
        if required:
            raise MedalignError(f"<{node.tag}> has no {attribute!r} timestamp", path=path, line=node.line)
        return None
    value = parse_timestamp(raw)
    if value is None:
        raise MedalignError(f"<{node.tag}> has a bad {attribute!r} timestamp {raw!r}", path=path, line=node.line)
    return value


# ----------------------------------------------------------------------------------------------- paper layout

_CODE_LINE = re.compile(r"^\s*\[(?P<code>[^\]]*)\]\s*(?P<rest>.*?)\s*$", re.DOTALL)
# "<name> <number> [<unit of at most two words>]", e.g. "Mean blood pressure 122 mm Hg", "Oxygen saturation 96 %".
_NAME_VALUE_UNIT = re.compile(
    r"^(?P<name>.*?\S)\s+(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:\s+(?P<unit>[^\d\s]\S*(?:\s+[^\d\s]\S*)?))?$",
    re.DOTALL,
)
# Only these kinds carry results; in drug or procedure names a trailing number is part of the name
# ("Labetalol 5mg IV x 1").
_KINDS_WITH_VALUES = {EventKind.measurement, EventKind.observation}
_NULL_WORDS = {"", "null", "none", "nan"}


def parse_code_line(text: str, *, with_value: bool = True) -> tuple[str | None, str | None, str | None, str | None]:
    """Split a paper-layout `<code>` text `[VOCAB/CODE] name value unit` into (code, name, value, unit).

    The value is a trailing number, optionally followed by a unit of one or two words; without
    `with_value` (or when no trailing number is found) everything after the code is the name.
    """
    match = _CODE_LINE.match(text)
    code, rest = (match["code"].strip() or None, match["rest"]) if match else (None, text.strip())
    if with_value:
        parsed = _NAME_VALUE_UNIT.match(rest)
        if parsed:
            return code, parsed["name"], parsed["value"], parsed["unit"]
    return code, rest or None, None, None


def _clean_block(text: str) -> str:
    """Drop the indentation the pretty-printed paper layout adds to every line of a text block."""
    return "\n".join(line.strip() for line in text.strip().splitlines())


def _paper_demographics(person: _Node, path: Path) -> Demographics:
    fields: dict[str, str] = {}
    for line in person.text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields[key.strip().lower()] = value.strip()
    birthdate = None
    if "birth" in fields:
        birthdate = parse_timestamp(fields["birth"])
        if birthdate is None:
            raise MedalignError(f"<person> has a bad birth date {fields['birth']!r}", path=path, line=person.line)
    return Demographics(
        birthdate=birthdate, gender=fields.get("gender"), race=fields.get("race"), ethnicity=fields.get("ethnicity")
    )


def _source_type(raw: str | None, kind: EventKind) -> str | None:
    """Keep the raw type name only when it is not what we would write for `kind`, so round trips are exact."""
    if raw is None or raw == OMOP_TABLE_BY_KIND[kind]:
        return None
    return raw


def _paper_events(node: _Node, encounter_id: str, events: list[Event], path: Path) -> None:
    """Append the events of one event element (`<measurement>`, `<note>`, ...) of the paper layout."""
    stamp = _timestamp(node, "start", path)
    assert stamp is not None
    kind = kind_from_source_type(node.tag)
    source_type = _source_type(node.tag, kind)
    if kind is EventKind.note:
        note_type = node.attrib.get("type", "").strip()
        events.append(
            Event(
                event_id=f"{encounter_id}-e{len(events):05d}",
                timestamp=stamp,
                kind=kind,
                source_type=source_type,
                name=None if note_type.lower() in _NULL_WORDS else note_type,
                text=_clean_block(node.text) or None,
            )
        )
        return
    lines = [child.text for child in node.children if child.tag == "code"]
    if not lines and node.text.strip():
        lines = [node.text]
    for line in lines:
        code, name, value, unit = parse_code_line(line, with_value=kind in _KINDS_WITH_VALUES)
        if code is None and name is None:
            continue
        events.append(
            Event(
                event_id=f"{encounter_id}-e{len(events):05d}",
                timestamp=stamp,
                kind=kind,
                source_type=source_type,
                code=code,
                name=name,
                value=value,
                unit=unit,
            )
        )


def _read_paper(root: _Node, patient_id: str, path: Path) -> PatientRecord:
    demographics: Demographics | None = None
    encounters: list[Encounter] = []
    for visit in (child for child in root.children if child.tag == "visit"):
        encounter_id = visit.attrib.get("id") or f"{patient_id}-enc{len(encounters):04d}"
        events: list[Event] = []
        # Events sit in <day> blocks, but tolerate them directly under <visit> too.
        blocks = [day for day in visit.children if day.tag == "day"] + [visit]
        for block in blocks:
            for element in block.children:
                if element.tag == "person":
                    if demographics is None:
                        demographics = _paper_demographics(element, path)
                elif element.tag in ("day", "code"):
                    continue
                elif "start" in element.attrib:
                    _paper_events(element, encounter_id, events, path)
        start = _timestamp(visit, "start", path, required=not events)
        if start is None:
            start = min(ev.timestamp for ev in events)
        visit_type = visit.attrib.get("type", "").strip() or "encounter"
        end = max((ev.timestamp for ev in events), default=None)
        encounters.append(Encounter(encounter_id=encounter_id, type=visit_type, start=start, end=end, events=events))
    return _finish(patient_id, demographics or Demographics(), encounters, path)


# --------------------------------------------------------------------------------------------- release layout


def _release_demographics(person: _Node, path: Path) -> Demographics:
    def first_text(tag: str) -> str | None:
        for node in person.iter(tag):
            if node.text.strip():
                return node.text.strip()
        return None

    birthdate = None
    raw_birth = first_text("birthdate")
    if raw_birth is not None:
        birthdate = parse_timestamp(raw_birth)
        if birthdate is None:
            raise MedalignError(f"<birthdate> has a bad date {raw_birth!r}", path=path, line=person.line)
    return Demographics(
        birthdate=birthdate, gender=first_text("gender"), race=first_text("race"), ethnicity=first_text("ethnicity")
    )


def _attr(node: _Node, name: str) -> str | None:
    """An attribute's value, with an empty value read as absent (our writer never writes empty attributes)."""
    value = node.attrib.get(name)
    return value if value else None


def _release_event(node: _Node, stamp: datetime, event_id: str) -> Event:
    raw_type = _attr(node, "type")
    kind = kind_from_source_type(raw_type) if raw_type else EventKind.other
    body = node.text or None
    value_attr = _attr(node, "value")
    if value_attr is not None:  # our writer moves the value to an attribute when the body is free text
        value, text = value_attr, body
    elif kind is EventKind.note:
        value, text = None, body
    else:
        value, text = body, None
    return Event(
        event_id=_attr(node, "id") or event_id,
        timestamp=stamp,
        kind=kind,
        source_type=_source_type(raw_type, kind),
        code=_attr(node, "code"),
        name=_attr(node, "name"),
        value=value,
        unit=_attr(node, "unit"),
        text=text,
    )


def _read_release(root: _Node, patient_id: str, path: Path) -> PatientRecord:
    demographics: Demographics | None = None
    encounters: list[Encounter] = []
    for node in (child for child in root.children if child.tag == "encounter"):
        encounter_id = _attr(node, "id") or f"{patient_id}-enc{len(encounters):04d}"
        events: list[Event] = []
        for part in node.children:
            if part.tag == "person" and demographics is None:
                found = _release_demographics(part, path)
                if found != Demographics():
                    demographics = found
            elif part.tag == "events":
                for entry in part.children:
                    if entry.tag == "entry":
                        stamp = _timestamp(entry, "timestamp", path)
                        members = [ev for ev in entry.children if ev.tag == "event"]
                    elif entry.tag == "event":  # tolerate an event carrying its own timestamp
                        stamp = _timestamp(entry, "timestamp", path)
                        members = [entry]
                    else:
                        continue
                    assert stamp is not None
                    for member in members:
                        events.append(_release_event(member, stamp, f"{encounter_id}-e{len(events):05d}"))
        start = _timestamp(node, "start_timestamp", path, required=not events)
        if start is None:
            start = min(ev.timestamp for ev in events)
        end = _timestamp(node, "end_timestamp", path, required=False)
        encounter_type = _attr(node, "type")
        if encounter_type is None:
            encounter_type = next(
                (ev.name for ev in events if ev.kind is EventKind.visit and ev.name and ev.name.strip()), "encounter"
            )
        encounters.append(
            Encounter(encounter_id=encounter_id, type=encounter_type, start=start, end=end, events=events)
        )
    return _finish(patient_id, demographics or Demographics(), encounters, path)


# -------------------------------------------------------------------------------------------------- entry point


def _finish(patient_id: str, demographics: Demographics, encounters: list[Encounter], path: Path) -> PatientRecord:
    if not encounters:
        raise MedalignError("the record has no encounters (no <visit> or <encounter> elements)", path=path)
    # Gold evidence points at event ids: a repeated id would make it ambiguous.
    seen_encounters: set[str] = set()
    seen_events: set[str] = set()
    for encounter in encounters:
        if encounter.encounter_id in seen_encounters:
            raise MedalignError(f"encounter id {encounter.encounter_id!r} appears twice", path=path)
        seen_encounters.add(encounter.encounter_id)
        for event in encounter.events:
            if event.event_id in seen_events:
                raise MedalignError(f"event id {event.event_id!r} appears twice", path=path)
            seen_events.add(event.event_id)
    return PatientRecord(patient_id=patient_id, demographics=demographics, encounters=encounters)


def read_record(path: str | os.PathLike, patient_id: str | None = None) -> PatientRecord:
    """Read one patient's EHR XML (paper `<record>` or release `<eventstream>` layout).

    The patient id is `patient_id` if given, else the release layout's `person_id` attribute, else the file stem;
    it must be safe as a file name. Event and encounter ids missing from the file are made deterministically
    (`<patient>-enc0000`, `<encounter>-e00000`: positions in the file), so gold evidence can point at them.
    Raises MedalignError naming the file (and line) for anything it cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise MedalignError("EHR file not found", path=path)
    root = _parse_tree(path)
    if root.tag == "record":
        reader = _read_paper
        default_id = path.stem
    elif root.tag == "eventstream":
        reader = _read_release
        default_id = _attr(root, "person_id") or path.stem
    else:
        raise MedalignError(
            f"unknown EHR layout: root element <{root.tag}> (expected <record> or <eventstream>)",
            path=path,
            line=root.line,
        )
    chosen = patient_id if patient_id is not None else default_id
    check_patient_id(chosen, path=str(path))
    return reader(root, chosen, path)
