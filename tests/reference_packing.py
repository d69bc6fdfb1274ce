"""Frozen copy of the chunk packing as it was before issue 14's query-path work (commit e6d5da6): every attempt
renders the whole context and counts it with the tokenizer. tests/test_packing_equivalence.py checks that the
faster packing in medalign_rag/context.py returns exactly what this returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Sequence

from pydantic import BaseModel

from medalign_rag.context import AssembledContext, Citation
from medalign_rag.errors import MedalignError
from medalign_rag.index.store import PatientIndex
from medalign_rag.records.model import Event
from medalign_rag.records.serialize import (
    ENCOUNTER_CLOSE,
    ENTRY_CLOSE,
    EVENTS_CLOSE,
    EVENTS_OPEN,
    STREAM_CLOSE,
    entry_overhead_text,
    render_encounter,
    render_encounter_open,
    render_entry_open,
    render_event_line,
    render_stream_open,
)
from medalign_rag.tokenization import TokenCounter, count_many

DEFAULT_ANSWER_RESERVE = 256
_RENDER: dict[int, tuple] = {}


@dataclass
class EventCosts:
    """Per-event token costs for one (index, tokenizer) pair, computed once and reused across instructions."""

    event_cost: list[list[int]]  # [chunk position][event position]
    entry_cost: int
    empty_context: int
    encounter_cost: dict[str, int] = field(default_factory=dict)


def _costs(index: PatientIndex, counter: TokenCounter) -> EventCosts:
    flat_lines = [line for lines in _render_cache(index).event_lines for line in lines]
    # +1: the newline; cached lines already carry their indentation.
    flat_costs = [c + 1 for c in count_many(counter, flat_lines)]
    event_cost, at = [], 0
    for chunk in index.chunks:
        event_cost.append(flat_costs[at : at + len(chunk.events)])
        at += len(chunk.events)
    entry_cost = counter.count(entry_overhead_text()) + 2
    empty_context = counter.count(_render_text(index, [])) + 1
    costs = EventCosts(event_cost=event_cost, entry_cost=entry_cost, empty_context=empty_context)
    for chunk in index.chunks:
        if chunk.encounter_id not in costs.encounter_cost:
            costs.encounter_cost[chunk.encounter_id] = counter.count(
                render_encounter(chunk.encounter(), [], include_ids=False)
            ) + 2
    return costs


@dataclass
class RenderCache:
    """Each event's XML line and each encounter's opening tag, rendered once per loaded index."""

    event_lines: list[list[str]]
    encounter_open: dict[str, str]
    entry_open: dict[datetime, str] = field(default_factory=dict)


def _render_cache(index: PatientIndex) -> RenderCache:
    cache = _RENDER.get(id(index))
    if cache is None or cache[0] is not index:
        cache = (index, RenderCache(
            event_lines=[[render_event_line(ev, include_ids=False) for ev in c.events] for c in index.chunks],
            encounter_open={c.encounter_id: render_encounter_open(c.encounter(), include_ids=False)
                            for c in index.chunks},
        ))
        _RENDER[id(index)] = cache
    return cache[1]


def _chronological(index: PatientIndex, selected: dict[int, list[int]]) -> list[tuple[int, int, int]]:
    """(record ordinal, chunk position, event position) of the chosen events, in record order."""
    items = [(index.chunks[p].ordinal + i, p, i) for p, positions in selected.items() for i in positions]
    items.sort()
    return items


def _render_text(index: PatientIndex, items: list[tuple[int, int, int]]) -> str:
    """Same text as `render_encounter` per encounter, joined from cached lines (this runs several times per
    instruction, so it must not re-escape the record each time)."""
    cache = _render_cache(index)
    lines = [render_stream_open(index.patient_id)]
    for encounter_id, group in groupby(items, key=lambda item: index.chunks[item[1]].encounter_id):
        lines.append(cache.encounter_open[encounter_id])
        lines.append(EVENTS_OPEN)
        last_stamp = None
        for _, position, i in group:
            stamp = index.chunks[position].events[i].timestamp
            if stamp != last_stamp:
                if last_stamp is not None:
                    lines.append(ENTRY_CLOSE)
                entry = cache.entry_open.get(stamp)
                if entry is None:
                    entry = cache.entry_open[stamp] = render_entry_open(stamp)
                lines.append(entry)
                last_stamp = stamp
            lines.append(cache.event_lines[position][i])
        if last_stamp is not None:
            lines.append(ENTRY_CLOSE)
        lines.append(EVENTS_CLOSE)
        lines.append(ENCOUNTER_CLOSE)
    lines.append(STREAM_CLOSE)
    return "\n".join(lines) + "\n"


def _citations(index: PatientIndex, items: list[tuple[int, int, int]]) -> tuple[list[Citation], list[str]]:
    citations: list[Citation] = []
    for encounter_id, group in groupby(items, key=lambda item: index.chunks[item[1]].encounter_id):
        chunk = index.chunks[next(group)[1]]
        citations.append(Citation(encounter_id=chunk.encounter_id, encounter_type=chunk.encounter_type,
                                  start=chunk.encounter_start, end=chunk.encounter_end))
    event_ids = [index.chunks[p].events[i].event_id for _, p, i in items]
    return citations, event_ids


def _visible(event: Event, time_anchor: datetime | None) -> bool:
    return time_anchor is None or event.timestamp <= time_anchor


class _Packing(BaseModel):
    selected: dict[int, list[int]]
    added: list[int]
    trimmed: list[str]
    estimated_tokens: int
    complete: bool  # everything eligible fitted: a bigger budget would add nothing


def _pack(
    index: PatientIndex,
    costs: EventCosts,
    chunk_order: Sequence[int],
    available: float,
    fixed: int,
    time_anchor: datetime | None,
    newest_first: bool,
) -> _Packing:
    """Greedy packing by estimated cost, in `chunk_order`; the first chunk that does not fit is trimmed."""
    used = fixed
    opened: set[str] = set()
    selected: dict[int, list[int]] = {}
    added: list[int] = []
    trimmed: list[str] = []
    complete = True
    for position in chunk_order:
        chunk = index.chunks[position]
        event_positions = [i for i, ev in enumerate(chunk.events) if _visible(ev, time_anchor)]
        if not event_positions:
            continue
        if newest_first:
            event_positions.reverse()
        header = 0 if chunk.encounter_id in opened else costs.encounter_cost[chunk.encounter_id]
        take: list[int] = []
        extra = header
        last_stamp = None
        for i in event_positions:
            stamp = chunk.events[i].timestamp
            step = costs.event_cost[position][i] + (costs.entry_cost if stamp != last_stamp else 0)
            if used + extra + step > available:
                break
            take.append(i)
            extra += step
            last_stamp = stamp
        if take:
            selected[position] = sorted(take)
            added.append(position)
            opened.add(chunk.encounter_id)
            used += extra
        if len(take) < len(event_positions):
            complete = False
            if not take and not newest_first:
                # A ranked chunk whose first event alone is over the room left (a long note) would otherwise end
                # the packing with the budget unused, even with nothing packed yet: skip it, try the next.
                continue
            if take:
                trimmed.append(chunk.chunk_id)
            break
    return _Packing(selected=selected, added=added, trimmed=trimmed, estimated_tokens=used, complete=complete)


def _fit_by_rescaling(index: PatientIndex, counter: TokenCounter, available: int, pack):
    """Per-line estimates are a few percent off the exact count of the joined text, in either direction. Pack by
    estimate (`pack(target)`), count exactly, rescale the estimated budget, and keep the fullest packing that fits.

    Returns (best fitting (packing, text, tokens) or None, the last packing, its text, its exact tokens)."""
    tolerance = max(8, available // 100)
    target = available * 0.99  # estimates run a little high or low; starting just under usually fits first time
    best = None
    for _ in range(5):
        packing = pack(target)
        text = _render_text(index, _chronological(index, packing.selected))
        tokens = counter.count(text)
        scale = packing.estimated_tokens / max(tokens, 1)
        if tokens <= available:
            if best is None or tokens > best[2]:
                best = (packing, text, tokens)
            if packing.complete or available - tokens <= tolerance:
                break
            target += (available - tokens) * scale * 0.98
        else:
            target -= (tokens - available) * scale * 1.02 + 1
    return best, packing, text, tokens


def assemble_context(
    index: PatientIndex,
    *,
    strategy: str,
    budget: int,
    counter: TokenCounter,
    ranking: Sequence[int] | Sequence[tuple[int, int]],
    newest_events_first: bool = False,
    overhead_tokens: int = 0,
    reserve_tokens: int = DEFAULT_ANSWER_RESERVE,
    time_anchor: datetime | None = None,
) -> AssembledContext:
    """Fit the ranked chunks (chunk positions, best first) into `budget` tokens, never more.

    `newest_events_first` keeps a partly fitting chunk's newest events (a cut of the record from the front, as
    `full` does) instead of its first ones. A ranking of events ((chunk position, event position) pairs, as the
    `events` strategy gives) is packed event by event (`assemble_event_context`)."""
    available = budget - overhead_tokens - reserve_tokens
    if available <= 0:
        raise MedalignError(
            f"budget {budget} leaves no room for the record after the prompt ({overhead_tokens} tokens) "
            f"and the answer reserve ({reserve_tokens})"
        )
    costs = _costs(index, counter)
    fixed = costs.empty_context
    newest_first = newest_events_first
    order = ranking

    best, packing, text, tokens = _fit_by_rescaling(
        index, counter, available, lambda target: _pack(index, costs, order, target, fixed, time_anchor, newest_first))
    if best is None:
        # Still over after rescaling (pathological tokenization): drop the lowest-ranked events until it fits.
        selected, added = packing.selected, list(packing.added)
        while tokens > available and added:
            last = added[-1]
            selected[last].pop(0 if newest_first else -1)  # `full` keeps the most recent part
            if not selected[last]:
                del selected[last]
                added.pop()
            text = _render_text(index, _chronological(index, selected))
            tokens = counter.count(text)
        if tokens > available:
            raise MedalignError(f"budget {budget} is too small for even an empty record context ({tokens} tokens)")
        packing.selected, packing.added = selected, added
        best = (packing, text, tokens)

    packing, text, tokens = best
    citations, event_ids = _citations(index, _chronological(index, packing.selected))
    chosen = [index.chunks[p] for p in sorted(packing.selected, key=lambda p: index.chunks[p].ordinal)]
    return AssembledContext(
        strategy=strategy,
        budget=budget,
        overhead_tokens=overhead_tokens,
        reserve_tokens=reserve_tokens,
        available_tokens=available,
        context_tokens=tokens,
        token_counter=counter.name,
        text=text,
        chunk_ids=[c.chunk_id for c in chosen],
        event_ids=event_ids,
        citations=citations,
        trimmed_chunk_ids=packing.trimmed,
    )
