"""Write timelines in MedAlign's release layout (`<eventstream><encounter><events><entry><event>`).

The same functions make prompt text: a chunk or a context is a rendering of (a subset of) a record's events,
so that every cut lands on an event boundary and the text stays well-formed XML.
"""

from __future__ import annotations

from datetime import datetime
from itertools import groupby
from typing import Iterable, Sequence
from xml.sax.saxutils import escape, quoteattr

from medalign_rag.records.model import OMOP_TABLE_BY_KIND, Encounter, Event, EventKind, PatientRecord

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
# XML parsers turn a raw carriage return in text into a newline; the character reference survives.
_TEXT_ENTITIES = {"\r": "&#13;"}


def format_timestamp(value: datetime | None) -> str:
    if not value:
        return ""
    # Fractions of a second are rare; keep them when present so that reading back gives the same time.
    return value.strftime(TIMESTAMP_FORMAT) + (f".{value.microsecond:06d}" if value.microsecond else "")


def _escape_text(text: str) -> str:
    return escape(text, _TEXT_ENTITIES)


def _attrs(pairs: Iterable[tuple[str, str | None]]) -> str:
    return "".join(f" {key}={quoteattr(value)}" for key, value in pairs if value not in (None, ""))


def render_event(event: Event, *, include_ids: bool = True) -> str:
    event_type = event.source_type or OMOP_TABLE_BY_KIND[event.kind]
    attrs = _attrs(
        [
            ("id", event.event_id if include_ids else None),
            ("type", event_type),
            ("code", event.code),
            ("name", event.name),
            ("unit", event.unit),
            # The body is the value, except for notes and events with free text: then the value is an attribute.
            ("value", event.value if event.text is not None or event.kind is EventKind.note else None),
        ]
    )
    if event.text is not None:
        body = event.text
    else:
        body = "" if event.kind is EventKind.note else (event.value or "")
    return f"<event{attrs}>{_escape_text(body)}</event>"


def render_encounter_open(encounter: Encounter, *, include_ids: bool = True) -> str:
    attrs = _attrs(
        [
            ("id", encounter.encounter_id if include_ids else None),
            ("type", encounter.type),
            ("start_timestamp", format_timestamp(encounter.start)),
            ("end_timestamp", format_timestamp(encounter.end)),
        ]
    )
    return f"<encounter{attrs}>"


def render_person(record: PatientRecord) -> str:
    demo = record.demographics
    fields = [
        ("birthdate", format_timestamp(demo.birthdate)),
        ("gender", demo.gender),
        ("race", demo.race),
        ("ethnicity", demo.ethnicity),
    ]
    inner = "".join(f"<{tag}>{_escape_text(value)}</{tag}>" for tag, value in fields if value)
    return f"<person>{inner}</person>" if inner else ""


# The fixed lines of the layout. Context assembly joins these pieces itself (it renders one record many times
# per instruction and must not re-escape it each time), so they are defined once, here.
EVENTS_OPEN = "  <events>"
EVENTS_CLOSE = "  </events>"
ENCOUNTER_CLOSE = "</encounter>"
ENTRY_CLOSE = "    </entry>"
STREAM_CLOSE = "</eventstream>"
_EVENT_INDENT = "      "


def render_stream_open(patient_id: str) -> str:
    return f"<eventstream person_id={quoteattr(patient_id)}>"


def render_entry_open(stamp: datetime) -> str:
    return f"    <entry timestamp={quoteattr(format_timestamp(stamp))}>"


def render_event_line(event: Event, *, include_ids: bool = True) -> str:
    """One event as the indented line it is inside `<entry>`."""
    return _EVENT_INDENT + render_event(event, include_ids=include_ids)


def render_events(events: Sequence[Event], *, include_ids: bool = True) -> list[str]:
    """Lines for `<events>` content: consecutive events with one timestamp share an `<entry>`."""
    lines: list[str] = []
    for stamp, group in groupby(events, key=lambda ev: ev.timestamp):
        lines.append(render_entry_open(stamp))
        lines.extend(render_event_line(ev, include_ids=include_ids) for ev in group)
        lines.append(ENTRY_CLOSE)
    return lines


def entry_overhead_text() -> str:
    """The text an `<entry>` adds around its events (its opening and closing lines), for token costing."""
    return render_entry_open(datetime(2000, 1, 1)) + "\n" + ENTRY_CLOSE + "\n"


def render_encounter(
    encounter: Encounter,
    events: Sequence[Event] | None = None,
    *,
    include_ids: bool = True,
    person: str = "",
) -> str:
    """One encounter (or the given subset of its events) as a well-formed `<encounter>` element."""
    events = encounter.events if events is None else events
    lines = [render_encounter_open(encounter, include_ids=include_ids)]
    if person:
        lines.append(f"  {person}")
    lines.append(EVENTS_OPEN)
    lines.extend(render_events(events, include_ids=include_ids))
    lines.append(EVENTS_CLOSE)
    lines.append(ENCOUNTER_CLOSE)
    return "\n".join(lines)


def render_record(
    record: PatientRecord,
    *,
    include_ids: bool = True,
    encounters: Sequence[tuple[Encounter, Sequence[Event]]] | None = None,
) -> str:
    """The whole record, or the given (encounter, events) selection, in the release layout."""
    selection = encounters if encounters is not None else [(enc, enc.events) for enc in record.encounters]
    person = render_person(record)
    body = [render_encounter(enc, evs, include_ids=include_ids, person=person) for enc, evs in selection]
    return "\n".join([render_stream_open(record.patient_id), *body, STREAM_CLOSE]) + "\n"


def write_release_xml(record: PatientRecord, path, *, include_ids: bool = True) -> None:
    """Atomically write `record` to `path` in the release layout."""
    from medalign_rag.atomic import atomic_write_text

    atomic_write_text(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + render_record(record, include_ids=include_ids))


def event_line_numbers(record: PatientRecord, *, include_ids: bool = True) -> list[int]:
    """Index of each event's first line in `render_record(record, include_ids=...).split("\\n")`, in record order.

    For callers that weigh a rendering line by line (how far an event sits from the record's end) without matching
    on the layout's indentation: the layout stays this module's business. A note's text may span several lines.
    """
    numbers: list[int] = []
    line = 1  # after <eventstream>
    encounter_header = 3 if render_person(record) else 2  # <encounter>, <person>, <events>
    for encounter in record.encounters:
        line += encounter_header
        for _, group in groupby(encounter.events, key=lambda ev: ev.timestamp):
            line += 1  # <entry>
            for event in group:
                numbers.append(line)
                line += 1 + render_event(event, include_ids=include_ids).count("\n")
            line += 1  # </entry>
        line += 2  # </events>, </encounter>
    return numbers
