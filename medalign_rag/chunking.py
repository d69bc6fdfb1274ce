"""Encounter chunking: one chunk per encounter, long encounters split at entry boundaries, never inside an event."""

from __future__ import annotations

from datetime import datetime
from itertools import groupby
from typing import Sequence

from pydantic import BaseModel, Field

from medalign_rag.records.model import Encounter, Event, PatientRecord
from medalign_rag.records.serialize import render_encounter, render_event, format_timestamp
from medalign_rag.tokenization import TokenCounter, count_many

DEFAULT_MAX_CHUNK_TOKENS = 256  # about one encoder window; finer chunks pack small budgets better


class ChunkingSettings(BaseModel):
    max_tokens: int = Field(DEFAULT_MAX_CHUNK_TOKENS, ge=64)


class Chunk(BaseModel):
    """A piece of one encounter: the unit that is retrieved, cited and packed into a context."""

    chunk_id: str
    patient_id: str
    encounter_id: str
    encounter_type: str
    encounter_start: datetime
    encounter_end: datetime | None = None
    part: int = 0
    n_parts: int = 1
    ordinal: int  # position of the first event in the record, so chunks sort chronologically as the record does
    events: list[Event]
    text: str
    token_count: int

    @property
    def event_ids(self) -> list[str]:
        return [ev.event_id for ev in self.events]

    @property
    def start(self) -> datetime:
        return self.events[0].timestamp if self.events else self.encounter_start

    @property
    def end(self) -> datetime:
        return self.events[-1].timestamp if self.events else (self.encounter_end or self.encounter_start)

    def encounter(self) -> Encounter:
        """The parent encounter's header (no events): enough to re-render any subset of this chunk's events."""
        return Encounter(
            encounter_id=self.encounter_id,
            type=self.encounter_type,
            start=self.encounter_start,
            end=self.encounter_end,
        )


def event_search_text(event: Event) -> str:
    """A compact plain-text line for embedding and BM25: markup tokens would waste the encoder's 256-token window."""
    parts = [format_timestamp(event.timestamp)[:16], event.kind.value + ":"]
    parts.extend(p for p in (event.name, event.code, event.value, event.unit) if p)
    if event.text:
        parts.append(event.text)
    return " ".join(parts)


_KIND_LABELS = {"condition": "diagnosis", "drug": "medication", "procedure": "procedure"}


def event_brief(event: Event) -> str:
    """What an event says, without its code and timestamp: the encoder's tokens go to content."""
    label = _KIND_LABELS.get(event.kind.value)
    parts = [label] if label else []
    parts.extend(p for p in (event.name, event.value, event.unit) if p)
    text = " ".join(parts)
    if event.text:
        text = f"{text}: {event.text}" if text else event.text
    return text


def chunk_embedding_lines(chunk: Chunk) -> list[str]:
    """One line per entry (events sharing a timestamp): the time once, then each event's brief."""
    return [
        f"{format_timestamp(stamp)[:16]} " + "; ".join(event_brief(ev) for ev in group)
        for stamp, group in groupby(chunk.events, key=lambda ev: ev.timestamp)
    ]


def chunk_header_text(chunk: Chunk) -> str:
    end = format_timestamp(chunk.encounter_end)[:10] if chunk.encounter_end else ""
    return f"{chunk.encounter_type} {format_timestamp(chunk.encounter_start)[:10]} to {end}".strip()


def _entry_groups(events: Sequence[Event]) -> list[list[Event]]:
    return [list(group) for _, group in groupby(events, key=lambda ev: ev.timestamp)]


def _split_oversized(events: list[Event], costs: list[int], budget: int) -> list[list[Event]]:
    """Split one entry that alone exceeds the budget between events (a single huge event stays whole)."""
    pieces: list[list[Event]] = [[]]
    used = 0
    for event, cost in zip(events, costs):
        if pieces[-1] and used + cost > budget:
            pieces.append([])
            used = 0
        pieces[-1].append(event)
        used += cost
    return pieces


def chunk_encounter(
    patient_id: str,
    encounter: Encounter,
    counter: TokenCounter,
    settings: ChunkingSettings,
    first_ordinal: int,
) -> list[Chunk]:
    empty_text = render_encounter(encounter, [], include_ids=False)
    overhead = counter.count(empty_text)
    events = encounter.events
    # Line costs are additive to within a few tokens (the tokenizer splits at newlines); the exact count of each
    # rendered piece is checked below and a piece that is still over is split again.
    line_costs = count_many(counter, [render_event(ev, include_ids=False) for ev in events])
    cost_of = {id(ev): c + 2 for ev, c in zip(events, line_costs)}
    entry_overhead = 12

    budget = settings.max_tokens - overhead
    pieces: list[list[Event]] = []
    current: list[Event] = []
    used = 0
    for group in _entry_groups(events):
        group_cost = entry_overhead + sum(cost_of[id(ev)] for ev in group)
        if group_cost > budget:
            if current:
                pieces.append(current)
                current, used = [], 0
            pieces.extend(_split_oversized(group, [cost_of[id(ev)] for ev in group], budget - entry_overhead))
            continue
        if current and used + group_cost > budget:
            pieces.append(current)
            current, used = [], 0
        current.extend(group)
        used += group_cost
    if current or not pieces:
        pieces.append(current)

    exact: list[tuple[list[Event], str, int]] = []
    for piece in pieces:
        stack = [piece]
        while stack:
            events_part = stack.pop(0)
            text = render_encounter(encounter, events_part, include_ids=False)
            tokens = counter.count(text)
            if tokens > settings.max_tokens and len(events_part) > 1:
                half = len(events_part) // 2
                stack[:0] = [events_part[:half], events_part[half:]]
                continue
            exact.append((events_part, text, tokens))

    chunks = []
    ordinal = first_ordinal
    for part, (events_part, text, tokens) in enumerate(exact):
        chunks.append(
            Chunk(
                chunk_id=f"{encounter.encounter_id}#{part}",
                patient_id=patient_id,
                encounter_id=encounter.encounter_id,
                encounter_type=encounter.type,
                encounter_start=encounter.start,
                encounter_end=encounter.end,
                part=part,
                n_parts=len(exact),
                ordinal=ordinal,
                events=events_part,
                text=text,
                token_count=tokens,
            )
        )
        ordinal += len(events_part)
    return chunks


def chunk_record(
    record: PatientRecord,
    counter: TokenCounter,
    settings: ChunkingSettings | None = None,
) -> list[Chunk]:
    """Every event of `record` lands in exactly one chunk; no chunk exceeds `max_tokens` unless one event does."""
    settings = settings or ChunkingSettings()
    chunks: list[Chunk] = []
    ordinal = 0
    for encounter in record.encounters:
        chunks.extend(chunk_encounter(record.patient_id, encounter, counter, settings, ordinal))
        ordinal += len(encounter.events)
    return chunks
