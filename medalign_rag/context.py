"""Context assembly under a token budget, counted in the answering model's tokens.

`full` is MedAlign's baseline: the serialized record cut from the front so the most recent part fits.
Retrieval strategies pack ranked chunks until the budget is full, trimming the last one at event boundaries,
then put what they chose back in chronological order. Either way the text is the release-layout XML of the
chosen events, so every cut is on an event boundary. Event-level packing (`assemble_event_context`) may write many
values of one concept as one `<flowsheet>` line and many events of one type as a `<table>` of plain rows; the text
stays well-formed XML and every event shown is cited by id in `event_ids`.
"""

from __future__ import annotations

import re
from collections import Counter
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from pydantic import BaseModel

from medalign_rag.chunking import Chunk
from medalign_rag.errors import MedalignError
from medalign_rag.index.store import PatientIndex
from medalign_rag.records.model import OMOP_TABLE_BY_KIND, Event, EventKind
from medalign_rag.records.serialize import (
    ENCOUNTER_CLOSE,
    ENTRY_CLOSE,
    EVENTS_CLOSE,
    EVENTS_OPEN,
    STREAM_CLOSE,
    entry_overhead_text,
    format_timestamp,
    render_encounter,
    render_encounter_open,
    render_entry_open,
    render_event_line,
    render_stream_open,
)
from medalign_rag.tokenization import TokenCounter, count_many

DEFAULT_ANSWER_RESERVE = 256  # MedAlign reserves 256 tokens for the answer


class Citation(BaseModel):
    encounter_id: str
    encounter_type: str
    start: datetime
    end: datetime | None = None


class AssembledContext(BaseModel):
    strategy: str
    budget: int
    overhead_tokens: int  # prompt template + instruction
    reserve_tokens: int
    available_tokens: int  # what the record may use: budget - overhead - reserve
    context_tokens: int  # exact, in the counter's tokens
    token_counter: str
    text: str
    chunk_ids: list[str]
    event_ids: list[str]
    citations: list[Citation]
    trimmed_chunk_ids: list[str] = []


@dataclass
class EventCosts:
    """Per-event token costs for one (index, tokenizer) pair, computed once and reused across instructions.

    `event_cost`, `entry_cost` and `encounter_cost` are the packing's per-line estimates (a line counted alone, +1
    for its newline); `exact` (when the tokenizer allows it) counts any selection's rendered text exactly without
    rendering it."""

    event_cost: list[list[int]]  # [chunk position][event position]
    entry_cost: int
    empty_context: int
    encounter_cost: dict[str, int] = field(default_factory=dict)
    chunks: list[_ChunkCosts] = field(default_factory=list)  # per chunk position, for `_pack`
    exact: ExactCounts | None = None


@dataclass
class _ChunkCosts:
    """One chunk's running estimated cost, with an `<entry>` opened wherever the timestamp changes, in both packing
    orders; and its first and last event times, so a time anchor can be checked per chunk instead of per event."""

    forward: np.ndarray  # forward[j]: first j+1 events
    backward: np.ndarray  # backward[j]: last j+1 events
    first: datetime | None
    last: datetime | None


# cl100k's pre-tokenizer (tiktoken's regex) never joins text across a newline followed by a line that starts with
# something other than (whitespace then) a line break: the trailing newline closes the last piece of the line
# before it (`\s*[\r\n]+`, or `[\r\n]*` after punctuation), and no piece starts with a newline. Tokens never cross
# pieces, so a text of such lines joined by "\n" counts exactly the sum of its lines each counted with its "\n".
ADDITIVE_COUNTERS = frozenset({"cl100k_base"})


def line_splits_cleanly(line: str) -> bool:
    """True when a "\\n" before `line` always ends a pre-token: `line` has a non-whitespace character and no line break
    before it (else that whitespace, up to the newline after the line, joins the newline before it into one piece).
    Conservative: Python's whitespace is a superset of the tokenizer regex's `\\s`."""
    stripped = line.lstrip()
    return bool(stripped) and not any(ch in "\r\n" for ch in line[: len(line) - len(stripped)])


@dataclass
class ExactCounts:
    """Exact token counts of the rendered context, summed per line (valid because every line splits cleanly, see
    ADDITIVE_COUNTERS). Arrays are indexed by an event's place in record order (`RenderCache.flat_items`)."""

    frame: int  # stream open + close lines
    event_tokens: np.ndarray  # the event's line
    entry_tokens: np.ndarray  # an `<entry>` at the event's timestamp: its open and close lines
    encounter_tokens: np.ndarray  # the event's encounter: open tag, <events>, </events>, </encounter>

    def count(self, cache: RenderCache, flat: np.ndarray) -> int:
        """Tokens of `_render_text` for the events at sorted record places `flat`."""
        if not len(flat):
            return self.frame
        new_encounter, new_entry = _boundaries(cache, flat)
        return int(self.frame + self.event_tokens[flat].sum() + self.encounter_tokens[flat[new_encounter]].sum()
                   + self.entry_tokens[flat[new_entry]].sum())


def _counts_additively(counter: TokenCounter) -> bool:
    from medalign_rag.tokenization import TiktokenCounter

    return isinstance(counter, TiktokenCounter) and counter.name in ADDITIVE_COUNTERS


def _costs(index: PatientIndex, counter: TokenCounter) -> EventCosts:
    per_index = index.state.event_costs
    cached = per_index.get(counter.name)
    if cached is not None:
        return cached
    cache = _render_cache(index)
    flat_lines = [line for lines in cache.event_lines for line in lines]
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
    for chunk, cost in zip(index.chunks, event_cost):
        costs.chunks.append(_chunk_costs(chunk, cost, entry_cost))
    costs.exact = _exact_counts(index, counter, cache)
    per_index[counter.name] = costs
    return costs


def _chunk_costs(chunk: Chunk, cost: list[int], entry_cost: int) -> _ChunkCosts:
    stamps = [ev.timestamp for ev in chunk.events]
    forward = [c + (entry_cost if i == 0 or stamps[i] != stamps[i - 1] else 0) for i, c in enumerate(cost)]
    last = len(stamps) - 1
    backward = [cost[i] + (entry_cost if i == last or stamps[i] != stamps[i + 1] else 0)
                for i in range(last, -1, -1)]
    return _ChunkCosts(forward=np.cumsum(np.asarray(forward, dtype=np.int64)),
                       backward=np.cumsum(np.asarray(backward, dtype=np.int64)),
                       first=min(stamps) if stamps else None, last=max(stamps) if stamps else None)


def _exact_counts(index: PatientIndex, counter: TokenCounter, cache: RenderCache) -> ExactCounts | None:
    if not _counts_additively(counter):
        return None
    frame_lines = [render_stream_open(index.patient_id), STREAM_CLOSE]
    fixed_lines = [EVENTS_OPEN, EVENTS_CLOSE, ENCOUNTER_CLOSE, ENTRY_CLOSE]
    stamps = sorted({index.chunks[p].events[i].timestamp for _, p, i in cache.flat_items})
    entry_lines = [cache.entry_open.get(s) or cache.entry_open.setdefault(s, render_entry_open(s)) for s in stamps]
    encounter_ids = list(cache.encounter_open)
    lines = ([line for lines in cache.event_lines for line in lines] + frame_lines + fixed_lines + entry_lines
             + [cache.encounter_open[e] for e in encounter_ids])
    if not all(line_splits_cleanly(line) for line in lines):
        return None
    tokens = count_many(counter, [line + "\n" for line in lines])
    n_events = sum(len(lines) for lines in cache.event_lines)
    by_event, rest = tokens[:n_events], tokens[n_events:]
    frame, rest = sum(rest[:2]), rest[2:]
    (events_open, events_close, encounter_close, entry_close), rest = rest[:4], rest[4:]
    entry_of = {s: t + entry_close for s, t in zip(stamps, rest[: len(stamps)])}
    encounter_of = {e: t + events_open + events_close + encounter_close
                    for e, t in zip(encounter_ids, rest[len(stamps):])}
    starts = np.cumsum([0] + [len(lines) for lines in cache.event_lines])
    n = len(cache.flat_items)
    arrays = {name: np.zeros(n, dtype=np.int64) for name in ("event", "entry", "encounter")}
    for place, (_, p, i) in enumerate(cache.flat_items):
        chunk = index.chunks[p]
        arrays["event"][place] = by_event[starts[p] + i]
        arrays["entry"][place] = entry_of[chunk.events[i].timestamp]
        arrays["encounter"][place] = encounter_of[chunk.encounter_id]
    return ExactCounts(frame=frame, event_tokens=arrays["event"], entry_tokens=arrays["entry"],
                       encounter_tokens=arrays["encounter"])


@dataclass
class RenderCache:
    """Each event's XML line and each encounter's opening tag, rendered once per loaded index; and every event's
    place in record order (`flat_items[place]` = (record ordinal, chunk position, event position), sorted)."""

    event_lines: list[list[str]]
    encounter_open: dict[str, str]
    entry_open: dict[datetime, str] = field(default_factory=dict)
    flat_items: list[tuple[int, int, int]] = field(default_factory=list)
    place: list[np.ndarray] = field(default_factory=list)  # [chunk position][event position] -> place
    # per place: the event's line, and the lines that open its encounter / its entry before it (joined by "\n")
    place_line: list[str] = field(default_factory=list)
    place_opens_encounter: list[str] = field(default_factory=list)
    place_opens_entry: list[str] = field(default_factory=list)
    encounter_code: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    stamp_code: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _render_cache(index: PatientIndex) -> RenderCache:
    cache = index.state.render
    if cache is None:
        flat_items = sorted((c.ordinal + i, p, i) for p, c in enumerate(index.chunks) for i in range(len(c.events)))
        place = [np.zeros(len(c.events), dtype=np.int64) for c in index.chunks]
        for at, (_, p, i) in enumerate(flat_items):
            place[p][i] = at
        cache = RenderCache(
            event_lines=[[render_event_line(ev, include_ids=False) for ev in c.events] for c in index.chunks],
            encounter_open={c.encounter_id: render_encounter_open(c.encounter(), include_ids=False)
                            for c in index.chunks},
            flat_items=flat_items,
            place=place,
        )
        stamp_code: dict[datetime, int] = {}
        encounter_code = {e: k for k, e in enumerate(cache.encounter_open)}
        codes = np.zeros((2, len(flat_items)), dtype=np.int64)
        for at, (_, p, i) in enumerate(flat_items):
            chunk = index.chunks[p]
            stamp = chunk.events[i].timestamp
            entry = cache.entry_open.get(stamp)
            if entry is None:
                entry = cache.entry_open[stamp] = render_entry_open(stamp)
            cache.place_line.append(cache.event_lines[p][i])
            cache.place_opens_entry.append(entry)
            cache.place_opens_encounter.append(f"{cache.encounter_open[chunk.encounter_id]}\n{EVENTS_OPEN}\n{entry}")
            codes[0, at] = encounter_code[chunk.encounter_id]
            codes[1, at] = stamp_code.setdefault(stamp, len(stamp_code))
        cache.encounter_code, cache.stamp_code = codes[0], codes[1]
        index.state.render = cache
    return cache


def _places(index: PatientIndex, selected: dict[int, list[int]]) -> np.ndarray:
    """The record-order places of the chosen events, sorted."""
    if not selected:
        return np.zeros(0, dtype=np.int64)
    place = _render_cache(index).place
    parts = [place[p] if len(positions) == len(place[p]) else place[p][positions]
             for p, positions in selected.items()]
    return np.sort(np.concatenate(parts))


def _boundaries(cache: RenderCache, places: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of the sorted `places` open a new encounter group, and which a new `<entry>` (as `_render_text`
    groups them: consecutive events of one encounter, one entry per run of equal timestamps)."""
    encounters = cache.encounter_code[places]
    new_encounter = np.empty(len(places), dtype=bool)
    new_encounter[:1] = True
    np.not_equal(encounters[1:], encounters[:-1], out=new_encounter[1:])
    new_entry = new_encounter.copy()
    stamps = cache.stamp_code[places]
    new_entry[1:] |= stamps[1:] != stamps[:-1]
    return new_encounter, new_entry


_CLOSE_ENCOUNTER = f"{ENTRY_CLOSE}\n{EVENTS_CLOSE}\n{ENCOUNTER_CLOSE}"
_NEXT_ENTRY = ENTRY_CLOSE + "\n"


def _render_places(index: PatientIndex, places: np.ndarray) -> str:
    """`_render_text` of the events at sorted record `places`, from lines joined once per loaded index."""
    cache = _render_cache(index)
    lines = [render_stream_open(index.patient_id)]
    if len(places):
        new_encounter, new_entry = _boundaries(cache, places)
        line, opens_encounter, opens_entry = cache.place_line, cache.place_opens_encounter, cache.place_opens_entry
        append = lines.append
        first = True
        for at, encounter, entry in zip(places.tolist(), new_encounter.tolist(), new_entry.tolist()):
            if encounter:
                if not first:
                    append(_CLOSE_ENCOUNTER)
                first = False
                append(opens_encounter[at])
            elif entry:
                append(_NEXT_ENTRY + opens_entry[at])
            append(line[at])
        append(_CLOSE_ENCOUNTER)
    lines.append(STREAM_CLOSE)
    return "\n".join(lines) + "\n"


def _chronological(index: PatientIndex, selected: dict[int, list[int]]) -> list[tuple[int, int, int]]:
    """(record ordinal, chunk position, event position) of the chosen events, in record order."""
    flat_items = _render_cache(index).flat_items
    return [flat_items[at] for at in _places(index, selected).tolist()]


def _append_entries(index: PatientIndex, cache: RenderCache, items, lines: list[str]) -> None:
    """Append the events `items` (record order) as `<entry>` groups, one per timestamp, from cached lines."""
    last_stamp = None
    for _, position, i in items:
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


def _render_text(index: PatientIndex, items: list[tuple[int, int, int]]) -> str:
    """Same text as `render_encounter` per encounter, joined from cached lines (this runs several times per
    instruction, so it must not re-escape the record each time)."""
    cache = _render_cache(index)
    lines = [render_stream_open(index.patient_id)]
    for encounter_id, group in groupby(items, key=lambda item: index.chunks[item[1]].encounter_id):
        lines.append(cache.encounter_open[encounter_id])
        lines.append(EVENTS_OPEN)
        _append_entries(index, cache, group, lines)
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


def _fitting(running: np.ndarray, room: float) -> int:
    """How many leading steps of a running cost fit in `room` (the greedy loop's `used + step > available` test,
    done by bisection; the boundary is rechecked in Python numbers so float rounding cannot move it)."""
    k = int(np.searchsorted(running, room, side="right"))
    while k > 0 and int(running[k - 1]) > room:
        k -= 1
    while k < len(running) and int(running[k]) <= room:
        k += 1
    return k


def _pack(
    index: PatientIndex,
    costs: EventCosts,
    chunk_order: Sequence[int],
    available: float,
    fixed: int,
    time_anchor: datetime | None,
    newest_first: bool,
) -> _Packing:
    """Greedy packing by estimated cost, in `chunk_order`; the first chunk that does not fit is trimmed.

    A chunk whose events are all visible takes its fitting prefix (suffix when `newest_first`) from its running
    cost in one bisection; only a chunk that straddles the time anchor walks its events one by one."""
    used = fixed
    opened: set[str] = set()
    selected: dict[int, list[int]] = {}
    added: list[int] = []
    trimmed: list[str] = []
    complete = True
    chunks = index.chunks
    for position in chunk_order:
        chunk = chunks[position]
        shape = costs.chunks[position]
        if shape.first is None or (time_anchor is not None and shape.first > time_anchor):
            continue  # no visible event
        header = 0 if chunk.encounter_id in opened else costs.encounter_cost[chunk.encounter_id]
        if time_anchor is None or shape.last <= time_anchor:
            running = shape.backward if newest_first else shape.forward
            n_visible = len(running)
            room = available - used - header
            if int(running[-1]) <= room:
                n_take = n_visible
            elif int(running[0]) > room:
                n_take = 0  # near the end of the budget most chunks do not start: no bisection for them
            else:
                n_take = _fitting(running, room)
            extra = header + (int(running[n_take - 1]) if n_take else 0)
            if newest_first:
                take = list(range(n_visible - n_take, n_visible))
            else:
                take = list(range(n_take))
        else:
            event_positions = [i for i, ev in enumerate(chunk.events) if _visible(ev, time_anchor)]
            n_visible = len(event_positions)
            if newest_first:
                event_positions.reverse()
            take = []
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
            take.sort()
        if take:
            selected[position] = take
            added.append(position)
            opened.add(chunk.encounter_id)
            used += extra
        if len(take) < n_visible:
            complete = False
            if not take and not newest_first:
                # A ranked chunk whose first event alone is over the room left (a long note) would otherwise end
                # the packing with the budget unused, even with nothing packed yet: skip it, try the next.
                continue
            if take:
                trimmed.append(chunk.chunk_id)
            break
    return _Packing.model_construct(selected=selected, added=added, trimmed=trimmed, estimated_tokens=used,
                                    complete=complete)


def _exact_tokens(index: PatientIndex, counter: TokenCounter, selected: dict[int, list[int]]) -> int | None:
    """The exact token count of the selection's rendered context, without rendering it (None: this tokenizer or
    this record's text does not allow counting by lines)."""
    exact = _costs(index, counter).exact
    return None if exact is None else exact.count(_render_cache(index), _places(index, selected))


def _fit_by_rescaling(available: int, pack, measure, render, attempts: int = 5):
    """Per-item estimates are a few percent off the exact count of the joined text, in either direction. Pack by
    estimate (`pack(target)`), count exactly (`measure(packing)` -> (its text or None when counted without
    rendering, exact tokens)), rescale the estimated budget, and keep the fullest packing that fits. Only the
    packings returned are rendered (`render(packing)` -> text), and only when `measure` did not already.

    Returns (best fitting (packing, text, tokens) or None, the last packing, its text, its exact tokens)."""
    tolerance = max(8, available // 100)
    target = available * 0.99  # estimates run a little high or low; starting just under usually fits first time
    best = None
    measured: list[tuple[object, str]] = []  # texts by packing identity: packings are not hashable
    for _ in range(attempts):
        packing = pack(target)
        text, tokens = measure(packing)
        if text is not None:
            measured.append((packing, text))
        scale = packing.estimated_tokens / max(tokens, 1)
        if tokens <= available:
            if best is None or tokens > best[2]:
                best = (packing, None, tokens)
            if packing.complete or available - tokens <= tolerance:
                break
            target += (available - tokens) * scale * 0.98
        else:
            target -= (tokens - available) * scale * 1.02 + 1

    def text_of(chosen) -> str:
        text = next((text for candidate, text in measured if candidate is chosen), None)
        return text if text is not None else render(chosen)

    last_text = text_of(packing) if best is None or best[0] is packing else None
    if best is not None:
        best = (best[0], last_text if best[0] is packing else text_of(best[0]), best[2])
    return best, packing, last_text, tokens


def _count_selection(index: PatientIndex, counter: TokenCounter, selected: dict[int, list[int]]) -> tuple[str, int]:
    text = _render_places(index, _places(index, selected))
    tokens = _exact_tokens(index, counter, selected)
    return text, counter.count(text) if tokens is None else tokens


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
    if ranking and isinstance(ranking[0], tuple):
        return assemble_event_context(index, strategy=strategy, budget=budget, counter=counter,
                                      event_ranking=ranking, overhead_tokens=overhead_tokens,
                                      reserve_tokens=reserve_tokens, time_anchor=time_anchor)
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

    def render(packing: _Packing) -> str:
        return _render_places(index, _places(index, packing.selected))

    def measure(packing: _Packing) -> tuple[str | None, int]:
        tokens = _exact_tokens(index, counter, packing.selected)
        if tokens is not None:
            return None, tokens
        text = render(packing)
        return text, counter.count(text)

    best, packing, text, tokens = _fit_by_rescaling(
        available, lambda target: _pack(index, costs, order, target, fixed, time_anchor, newest_first), measure,
        render)
    if best is None:
        # Still over after rescaling (pathological tokenization): drop the lowest-ranked events until it fits.
        selected, added = packing.selected, list(packing.added)
        while tokens > available and added:
            last = added[-1]
            selected[last].pop(0 if newest_first else -1)  # `full` keeps the most recent part
            if not selected[last]:
                del selected[last]
                added.pop()
            text, tokens = _count_selection(index, counter, selected)
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


def format_citation(citation: Citation) -> str:
    end = f" to {format_timestamp(citation.end)[:10]}" if citation.end else ""
    return f"{citation.encounter_id} ({citation.encounter_type}, {format_timestamp(citation.start)[:10]}{end})"


# -- event-level packing ------------------------------------------------------------------------------------------

COPY_FORWARD_SHINGLE = 5  # words per shingle
COPY_FORWARD_OVERLAP = 0.8  # share of the shorter note's shingles found in the other: a copied-forward note

# Flowsheet rendering: when at least this many values of one concept (same type, code, name and unit) are among the
# events an encounter could show, they are written as one line under the encounter header ("name (unit): time value;
# time value; ...") instead of one XML event each; name, code, unit and the entry wrapper are then paid once, not
# per value. Tuned on the tune part of FHIR-AgentBench dev (benchmarks/ablation/events). None or 0 turns it off.
FLOWSHEET_MIN_VALUES = 3
# Tables: at least this many other events of one type (drugs, procedures ...) under one encounter are written as plain
# rows ("time name value unit detail") under one table header instead of XML events. Tuned likewise; 0 turns it off.
TABLE_MIN_ROWS = 2
# Table rows of one time hold every event of that time ("13:30 Sodium 139 mEq/L | Potassium 4.1 mEq/L | ..."): a lab
# panel or a round of orders pays its time, indentation and newline once instead of once per event.
TABLE_ROWS_BY_TIME = True
TABLE_CELL_SEPARATOR = " | "
FLOWSHEET_MAX_TEXT = 160  # events with longer free text (notes, long comments) always keep their own XML line
_FLOWSHEET_INDENT = "    "


def _shingles(text: str) -> frozenset[int]:
    words = text.lower().split()
    n = COPY_FORWARD_SHINGLE
    return frozenset(hash(" ".join(words[i:i + n])) for i in range(max(1, len(words) - n + 1)))


def near_duplicate(a: frozenset[int], b: frozenset[int], threshold: float = COPY_FORWARD_OVERLAP) -> bool:
    if not a or not b:
        return False
    return len(a & b) / min(len(a), len(b)) >= threshold


class _NoteCopies:
    """Per loaded index: each long note's shingles and, per pair of notes asked about, whether one copies the other.
    Packing asks the same questions for every rescaling attempt and every question about the patient; the answers
    depend only on the two texts, so they are computed once."""

    MAX_PAIRS = 200_000  # forget the pair answers beyond this (tens of MB; a long-running server, many questions)

    def __init__(self) -> None:
        self.shingles: dict[tuple[int, int], frozenset[int]] = {}
        self.pairs: dict[tuple[tuple[int, int], tuple[int, int]], bool] = {}

    def of(self, index: PatientIndex, position: int, i: int) -> frozenset[int]:
        key = (position, i)
        found = self.shingles.get(key)
        if found is None:
            found = self.shingles[key] = _shingles(index.chunks[position].events[i].text)
        return found

    def twin(self, key: tuple[int, int], shingles: frozenset[int], notes: list) -> tuple | None:
        """The first packed note (shingles, position, event position) in `notes` that `key`'s note copies."""
        pairs = self.pairs
        if len(pairs) > self.MAX_PAIRS:
            pairs.clear()
        for note in notes:
            pair = (key, (note[1], note[2]))
            same = pairs.get(pair)
            if same is None:
                same = pairs[pair] = near_duplicate(shingles, note[0])
            if same:
                return note
        return None


_NOTE_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _note_copies(index: PatientIndex) -> _NoteCopies:
    found = _NOTE_COPIES.get(index.state)
    if found is None:
        found = _NOTE_COPIES[index.state] = _NoteCopies()
    return found


def _flowsheet_key(event: Event) -> tuple[str, str | None, str | None, str | None] | None:
    """The concept a value belongs to on a flowsheet line; None for what must keep its own line (notes, text)."""
    if event.kind is EventKind.note or (event.text is not None and len(event.text) > FLOWSHEET_MAX_TEXT):
        return None
    return (event.source_type or OMOP_TABLE_BY_KIND[event.kind], event.code, event.name, event.unit)


def _flowsheet_time(stamp: datetime) -> str:
    return stamp.strftime("%H:%M:%S" if stamp.second or stamp.microsecond else "%H:%M")


SHORT_YEARS = True  # a date inside a value's text in the value's own year is written without it
_TIMESTAMP_IN_TEXT = re.compile(r"\b(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2})(:\d{2}(?:\.\d+)?)?\b")


def _shorter_times(text: str, day: str) -> str:
    """Times inside a value's text ("until 2137-06-21 10:00:00") without the item's own date or zero seconds, and
    without the item's own year ("until 06-21 10:00" in an item of 2137-06-19)."""
    def shorten(match: re.Match) -> str:
        seconds = match.group(3) or ""
        seconds = "" if seconds in ("", ":00") else seconds
        date = match.group(1)
        if date == day:
            date = ""
        elif SHORT_YEARS and date[:5] == day[:5]:
            date = date[5:] + " "
        else:
            date += " "
        return f"{date}{match.group(2)}{seconds}"

    return _TIMESTAMP_IN_TEXT.sub(shorten, text)


def _flowsheet_item(event: Event, with_date: bool) -> str:
    body = event.value or ""
    if event.text:
        text = _shorter_times(event.text, event.timestamp.strftime("%Y-%m-%d"))
        body = f"{body} {text}" if body else text
    stamp = (event.timestamp.strftime("%Y-%m-%d ") if with_date else "") + _flowsheet_time(event.timestamp)
    return escape(f"{stamp} {body}".rstrip(), {"\r": "&#13;"})


def _table_cell(event: Event) -> str:
    """An event in its type's table without its time: name (or code), value, unit and text, no markup."""
    fields = [event.name or event.code or "", event.value or "", event.unit or ""]
    if event.text:
        fields.append(_shorter_times(event.text, event.timestamp.strftime("%Y-%m-%d")))
    return escape(" ".join(f for f in fields if f), {"\r": "&#13;"})


def _table_row(event: Event, with_date: bool) -> str:
    """One event as a row of its type's table: its time, then its cell."""
    stamp = (event.timestamp.strftime("%Y-%m-%d ") if with_date else "") + _flowsheet_time(event.timestamp)
    return f"{stamp} {_table_cell(event)}".rstrip()


def _flowsheet_open(key: tuple[str, str | None, str | None, str | None]) -> str:
    kind, code, name, unit = key
    attrs = "".join(f" {k}={quoteattr(v)}" for k, v in (("type", kind), ("code", code), ("name", name),
                                                          ("unit", unit)) if v not in (None, ""))
    return f"{_FLOWSHEET_INDENT}<flowsheet{attrs}>"


def _table_open(kind: str) -> str:
    columns = "time name value unit detail" + (" | name value unit detail ..." if TABLE_ROWS_BY_TIME else "")
    return f"{_FLOWSHEET_INDENT}<table type={quoteattr(kind)} columns={quoteattr(columns)}>"


_TABLE_CLOSE = f"{_FLOWSHEET_INDENT}</table>"
_ROW_INDENT = _FLOWSHEET_INDENT + "  "


@dataclass
class FlowsheetCosts:
    """Per-event flowsheet and table keys and costs for one (index, tokenizer) pair, computed once."""

    key_of: list[list[int]]  # [chunk position][event position] -> concept key number, -1: keeps its XML line
    keys: list[tuple]
    item_cost: list[list[int]]  # the value with its time of day, and the separator
    line_cost: list[int]  # per key: the line's opening and closing tags and its newline
    date_cost: int  # a date written before the time, once per day on a line or in a table
    type_of: list[list[int]]  # [chunk position][event position] -> type number (-1 with key -1)
    types: list[str]
    row_cost: list[list[int]]  # the event as a table row, with its newline
    table_cost: list[int]  # per type: the table's opening and closing lines
    item_text: list[list[str]]  # the flowsheet item without its date, rendered once
    row_text: list[list[str]]  # the table row without its date and indentation, rendered once
    cell_cost: list[list[int]]  # the event inside a row of its time, with the separator before it
    cell_text: list[list[str]]  # the event inside a row of its time, rendered once
    minute_of: list[list[int]]  # the event's time as a number (seconds), for grouping without datetimes
    day_of: list[list[int]]  # the event's day as a number
    fact_of: list[list[int]]  # same number: same time, name, code, value, unit and text (written once)


_FLOWSHEET_COSTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _flowsheet_costs(index: PatientIndex, counter: TokenCounter) -> FlowsheetCosts:
    per_index = _FLOWSHEET_COSTS.setdefault(index.state, {})
    cached = per_index.get(counter.name)
    if cached is not None:
        return cached
    key_number: dict[tuple, int] = {}
    type_number: dict[str, int] = {}
    fact_number: dict[tuple, int] = {}
    key_of: list[list[int]] = []
    type_of: list[list[int]] = []
    fact_of: list[list[int]] = []
    items: list[str] = []
    rows: list[str] = []
    cells: list[str] = []
    minute_of: list[list[int]] = []
    day_of: list[list[int]] = []
    for chunk in index.chunks:
        minute_of.append([int(ev.timestamp.timestamp()) for ev in chunk.events])
        day_of.append([ev.timestamp.toordinal() for ev in chunk.events])
        keys_row, types_row, facts_row = [], [], []
        for event in chunk.events:
            key = _flowsheet_key(event)
            keys_row.append(-1 if key is None else key_number.setdefault(key, len(key_number)))
            types_row.append(-1 if key is None else type_number.setdefault(key[0], len(type_number)))
            facts_row.append(fact_number.setdefault(_fact(event), len(fact_number)))
            items.append(_flowsheet_item(event, with_date=False))
            rows.append(_table_row(event, with_date=False))
            cells.append(_table_cell(event))
        key_of.append(keys_row)
        type_of.append(types_row)
        fact_of.append(facts_row)
    flat_items = [c + 1 for c in count_many(counter, items)]  # +1: the "; " between items
    flat_rows = [c + 1 for c in count_many(counter, [_ROW_INDENT + row for row in rows])]  # +1: the newline
    flat_cells = count_many(counter, [TABLE_CELL_SEPARATOR + cell for cell in cells])
    item_cost, row_cost, item_text, row_text, cell_cost, cell_text, at = [], [], [], [], [], [], 0
    for chunk in index.chunks:
        end = at + len(chunk.events)
        cell_cost.append(flat_cells[at:end])
        cell_text.append(cells[at:end])
        item_cost.append(flat_items[at:end])
        row_cost.append(flat_rows[at:end])
        item_text.append(items[at:end])
        row_text.append(rows[at:end])
        at = end
    keys, types = list(key_number), list(type_number)
    line_cost = [c + 2 for c in count_many(counter, [_flowsheet_open(k) + "</flowsheet>" for k in keys])]
    table_cost = [c + 2 for c in count_many(counter, [_table_open(t) + "\n" + _TABLE_CLOSE for t in types])]
    costs = FlowsheetCosts(key_of=key_of, keys=keys, item_cost=item_cost, line_cost=line_cost,
                           date_cost=counter.count("01-01 " if SHORT_YEARS else "2000-01-01 "), type_of=type_of, types=types,
                           row_cost=row_cost, table_cost=table_cost, item_text=item_text, row_text=row_text,
                           cell_cost=cell_cost, cell_text=cell_text, minute_of=minute_of, day_of=day_of,
                           fact_of=fact_of)
    per_index[counter.name] = costs
    return costs


@dataclass
class _Layout:
    """How the chosen events of an encounter are written: (encounter, concept key) pairs as flowsheet lines,
    (encounter, type) pairs as tables, everything else as XML entries."""

    sheet: FlowsheetCosts | None = None
    sheets: set = field(default_factory=set)
    tables: set = field(default_factory=set)

    def place(self, encounter_id: str, position: int, i: int) -> tuple[str, int]:
        """("sheet", key), ("table", type) or ("xml", -1) for one event."""
        if self.sheet is None:
            return "xml", -1
        key = self.sheet.key_of[position][i]
        if key < 0:
            return "xml", -1
        if (encounter_id, key) in self.sheets:
            return "sheet", key
        kind = self.sheet.type_of[position][i]
        if (encounter_id, kind) in self.tables:
            return "table", kind
        return "xml", -1


def _layout(index: PatientIndex, costs: EventCosts, sheet: FlowsheetCosts, order: Sequence[tuple[int, int]],
            available: float, min_values: int, min_rows: int, time_anchor: datetime | None) -> _Layout:
    """Flowsheet pairs: at least `min_values` values of one concept under one encounter among the ranked events
    that could reach the context (the head of the ranking that fits `available` at the compact prices); table
    pairs: at least `min_rows` other events of one type under one encounter in that head. With rows by time, a
    concept keeps a flowsheet line only where the line costs less than its values would as cells of the rows of
    their times (one value a day of each of twenty labs drawn together: the rows; hourly vitals: the line)."""
    head: list[tuple[str, int, int]] = []
    concept_counts: dict[tuple[str, int], int] = {}
    spent = 0.0
    for position, i in order:
        chunk = index.chunks[position]
        if time_anchor is not None and chunk.events[i].timestamp > time_anchor:
            continue
        key = sheet.key_of[position][i]
        if key < 0:
            spent += costs.event_cost[position][i]
        else:
            pair = (chunk.encounter_id, key)
            concept_counts[pair] = concept_counts.get(pair, 0) + 1
            head.append((chunk.encounter_id, position, i))
            price = sheet.item_cost[position][i]
            spent += min(price, sheet.cell_cost[position][i]) if TABLE_ROWS_BY_TIME else price
        if spent > available:
            break
    sheets = {pair for pair, n in concept_counts.items() if n >= min_values} if min_values else set()
    if sheets and TABLE_ROWS_BY_TIME and min_rows:
        sheets = _cheaper_as_lines(index, sheet, head, sheets)
    type_counts: dict[tuple[str, int], int] = {}
    for encounter_id, position, i in head:
        if (encounter_id, sheet.key_of[position][i]) not in sheets:
            pair = (encounter_id, sheet.type_of[position][i])
            type_counts[pair] = type_counts.get(pair, 0) + 1
    tables = {pair for pair, n in type_counts.items() if n >= min_rows} if min_rows else set()
    return _Layout(sheet if sheets or tables else None, sheets, tables)


def _cheaper_as_lines(index: PatientIndex, sheet: FlowsheetCosts, head: list[tuple[str, int, int]],
                      candidates: set) -> set:
    """The candidate (encounter, concept) pairs whose flowsheet line costs less than their values as cells of
    their type's rows by time, the other events of those times and days being in the rows."""
    type_of, key_of, minute_of, day_of = sheet.type_of, sheet.key_of, sheet.minute_of, sheet.day_of
    encounters = [encounter_id for encounter_id, _, _ in head]
    kinds = [type_of[position][i] for _, position, i in head]
    # (encounter, type, time) and (encounter, type, day) -> events of the head then (Counter counts in C: this
    # runs over every event a 32k context could hold)
    at_time = Counter(zip(encounters, kinds, [minute_of[position][i] for _, position, i in head]))
    on_day = Counter(zip(encounters, kinds, [day_of[position][i] for _, position, i in head]))
    line: dict[tuple, float] = {}
    rows: dict[tuple, float] = {}
    own_day: Counter = Counter()  # (encounter, concept, type, day) -> the concept's own values that day
    for encounter_id, position, i in head:
        key = key_of[position][i]
        pair = (encounter_id, key)
        if pair not in candidates:
            continue
        kind = type_of[position][i]
        line[pair] = line.get(pair, sheet.line_cost[key]) + sheet.item_cost[position][i]
        shared = at_time[(encounter_id, kind, minute_of[position][i])] > 1
        rows[pair] = rows.get(pair, 0.0) + (sheet.cell_cost if shared else sheet.row_cost)[position][i]
        own_day[(encounter_id, key, kind, day_of[position][i])] += 1
    for (encounter_id, key, kind, day), n in own_day.items():
        line[(encounter_id, key)] += sheet.date_cost  # a line writes each of its days
        if on_day[(encounter_id, kind, day)] == n:  # rows write it only for a day no other event shares
            rows[(encounter_id, key)] += sheet.date_cost
    return {pair for pair in candidates if line[pair] <= rows[pair]}


def _fact(event: Event) -> tuple:
    """What a compact item shows of an event: events with the same fact are written once, with a count."""
    return event.timestamp, event.name, event.code, event.value, event.unit, event.text


REPEAT_COST = 3  # tokens of the " (x2)" that stands for a repeated fact


def _day_label(day, previous) -> str:
    """The date written before the first time of a day on a line or in a table: in full for the first day, then
    without the year while it stays the same ("2146-07-06 08:00 ...; 07-07 09:00 ...")."""
    if SHORT_YEARS and previous is not None and previous.year == day.year:
        return day.strftime("%m-%d ")
    return day.strftime("%Y-%m-%d ")


def _once_each(values: list[tuple[Event, int, str]]) -> list[str]:
    """(event, fact number, text without date) in time order -> one item per distinct fact ("08:00 15 SC; HS
    (x4)"), the date written where it changes."""
    counts: dict[int, int] = {}
    first: dict[int, tuple[Event, str]] = {}
    for event, fact, text in values:
        counts[fact] = counts.get(fact, 0) + 1
        if fact not in first:
            first[fact] = (event, text)
    items, last_day = [], None
    for fact, (event, text) in first.items():
        day = event.timestamp.date()
        if day != last_day:
            text = _day_label(day, last_day) + text
            last_day = day
        items.append(text if counts[fact] == 1 else f"{text} (x{counts[fact]})")
    return items


def _rows_by_time(values: list[tuple[Event, int, str, str]]) -> list[str]:
    """(event, fact number, row without date, cell) in time order -> table rows, one per time: the first distinct
    fact of a time as its row, the others appended as cells ("13:30 Sodium 139 mEq/L | Potassium 4.1 mEq/L"), a
    repeated fact once with its count; the date written where it changes."""
    counts: dict[int, int] = {}
    first: dict[int, tuple[Event, str, str]] = {}
    for event, fact, row, cell in values:
        counts[fact] = counts.get(fact, 0) + 1
        if fact not in first:
            first[fact] = (event, row, cell)
    rows: list[str] = []
    last_day, last_stamp = None, None
    for fact, (event, row, cell) in first.items():
        repeat = "" if counts[fact] == 1 else f" (x{counts[fact]})"
        if event.timestamp == last_stamp:
            rows[-1] += TABLE_CELL_SEPARATOR + cell + repeat
            continue
        last_stamp = event.timestamp
        day = event.timestamp.date()
        if day != last_day:
            row = _day_label(day, last_day) + row
            last_day = day
        rows.append(row + repeat)
    return rows


class _LineCounts:
    """Exact token counts of rendered lines (each with its newline), per loaded index and tokenizer: a context is
    rendered and counted several times while packing (rescaling attempts, budgets, questions), mostly from the same
    event lines, so only lines not seen before are tokenized."""

    MAX_LINES = 100_000  # forget beyond this (flowsheet lines and tables differ from question to question)

    def __init__(self) -> None:
        self.tokens: dict[str, int] = {}

    def count(self, counter: TokenCounter, lines: list[str]) -> int | None:
        """Tokens of "\n".join(lines) + "\n", or None when a line does not split cleanly (count the text whole)."""
        tokens = self.tokens
        if len(tokens) > self.MAX_LINES:
            tokens.clear()
        new = [line for line in dict.fromkeys(lines) if line not in tokens]
        if not all(line_splits_cleanly(line) for line in new):
            return None
        for line, n in zip(new, count_many(counter, [line + "\n" for line in new])):
            tokens[line] = n
        return sum(tokens[line] for line in lines)


_LINE_COUNTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _count_lines(index: PatientIndex, counter: TokenCounter, lines: list[str]) -> int:
    """Tokens of the text of `lines` joined by newlines (with a final one): summed per line where cl100k's
    pre-tokenizer makes that exact (see ADDITIVE_COUNTERS), else counted whole."""
    if _counts_additively(counter):
        per_index = _LINE_COUNTS.setdefault(index.state, {})
        counts = per_index.get(counter.name)
        if counts is None:
            counts = per_index[counter.name] = _LineCounts()
        tokens = counts.count(counter, lines)
        if tokens is not None:
            return tokens
    return counter.count("\n".join(lines) + "\n")


def _render_event_lines(index: PatientIndex, items: list[tuple[int, int, int]], layout: _Layout) -> list[str]:
    """The chosen events under their encounter headers: first the encounter's flowsheet lines (one per concept,
    values in time order, the date written when it changes), then its tables (one row per event), then the rest
    as XML entries."""
    cache = _render_cache(index)
    lines = [render_stream_open(index.patient_id)]
    for encounter_id, group in groupby(items, key=lambda item: index.chunks[item[1]].encounter_id):
        lines.append(cache.encounter_open[encounter_id])
        lines.append(EVENTS_OPEN)
        rest: list[tuple[int, int, int]] = []
        sheets: dict[int, list[tuple[Event, int, str]]] = {}
        tables: dict[int, list[tuple]] = {}
        sheet = layout.sheet
        for item in group:
            _, position, i = item
            place, number = layout.place(encounter_id, position, i)
            if place == "sheet":
                sheets.setdefault(number, []).append(
                    (index.chunks[position].events[i], sheet.fact_of[position][i], sheet.item_text[position][i]))
            elif place == "table":
                tables.setdefault(number, []).append(
                    (index.chunks[position].events[i], sheet.fact_of[position][i], sheet.row_text[position][i],
                     sheet.cell_text[position][i]))
            else:
                rest.append(item)
        for key, values in sheets.items():
            lines.append(_flowsheet_open(sheet.keys[key]) + "; ".join(_once_each(values)) + "</flowsheet>")
        for kind, values in tables.items():
            lines.append(_table_open(sheet.types[kind]))
            rows = _rows_by_time(values) if TABLE_ROWS_BY_TIME else _once_each([v[:3] for v in values])
            lines.extend(_ROW_INDENT + row for row in rows)
            lines.append(_TABLE_CLOSE)
        _append_entries(index, cache, rest, lines)
        lines.append(EVENTS_CLOSE)
        lines.append(ENCOUNTER_CLOSE)
    lines.append(STREAM_CLOSE)
    return lines


class _EventPacking(BaseModel):
    selected: dict[int, list[int]]
    also_cited: dict[str, list[str]]  # packed note event id -> ids of the copies it stands for
    estimated_tokens: int
    complete: bool


def _pack_events(
    index: PatientIndex,
    costs: EventCosts,
    order: Sequence[tuple[int, int]],
    available: float,
    fixed: int,
    time_anchor: datetime | None,
    dedupe_notes: bool,
    layout: _Layout | None = None,
) -> _EventPacking:
    """Greedy by estimated cost in `order`; an event that does not fit is skipped and smaller ones may follow.
    A note that repeats an already packed note (copied forward) is not packed again: the later of the two is
    kept, and it cites both. A value on a flowsheet line or a table costs its item or row (the line or table once)."""
    used = fixed
    opened: set[str] = set()
    entries: set[tuple[str, datetime]] = set()
    layout = layout or _Layout()
    sheet = layout.sheet
    compact_days: dict[tuple[str, str, int], set] = {}
    compact_facts: set[tuple] = set()
    compact_times: set[tuple] = set()  # (table, time) pairs with a row
    selected: dict[int, set[int]] = {}
    notes: list[tuple[frozenset[int], int, int]] = []  # shingles, chunk position, event position
    also_cited: dict[str, list[str]] = {}
    complete = True
    misses = 0
    copies = _note_copies(index)
    for position, i in order:
        chunk = index.chunks[position]
        event = chunk.events[i]
        if not _visible(event, time_anchor):
            continue
        if dedupe_notes and event.text and len(event.text) > 200:
            shingles = copies.of(index, position, i)
            twin = copies.twin((position, i), shingles, notes)
            if twin is not None:
                kept = index.chunks[twin[1]].events[twin[2]]
                if event.timestamp > kept.timestamp:
                    # the later copy replaces the earlier one when it fits in the earlier one's place
                    delta = costs.event_cost[position][i] - costs.event_cost[twin[1]][twin[2]]
                    new_entry = (chunk.encounter_id, event.timestamp) not in entries
                    extra = delta + (costs.entry_cost if new_entry else 0) + (
                        0 if chunk.encounter_id in opened else costs.encounter_cost[chunk.encounter_id])
                    if used + extra <= available:
                        selected[twin[1]].discard(twin[2])
                        if not selected[twin[1]]:
                            del selected[twin[1]]
                        selected.setdefault(position, set()).add(i)
                        opened.add(chunk.encounter_id)
                        entries.add((chunk.encounter_id, event.timestamp))
                        used += extra
                        notes.remove(twin)
                        notes.append((shingles, position, i))
                        also_cited[event.event_id] = [*also_cited.pop(kept.event_id, []), kept.event_id]
                        continue
                also_cited.setdefault(kept.event_id, []).append(event.event_id)
                continue
        else:
            shingles = None
        place, number = layout.place(chunk.encounter_id, position, i)
        compact = (place, chunk.encounter_id, number)
        if place != "xml" and (compact, sheet.fact_of[position][i]) in compact_facts:
            step = REPEAT_COST
        elif place != "xml":
            days = compact_days.get(compact)
            if place == "sheet":
                step = sheet.item_cost[position][i] + (sheet.line_cost[number] if days is None else 0)
            elif TABLE_ROWS_BY_TIME and (compact, event.timestamp) in compact_times:
                step = sheet.cell_cost[position][i]
            else:
                step = sheet.row_cost[position][i] + (sheet.table_cost[number] if days is None else 0)
            if days is None or event.timestamp.date() not in days:
                step += sheet.date_cost
        else:
            step = costs.event_cost[position][i]
            if (chunk.encounter_id, event.timestamp) not in entries:
                step += costs.entry_cost
        if chunk.encounter_id not in opened:
            step += costs.encounter_cost[chunk.encounter_id]
        if used + step > available:
            complete = False
            misses += 1
            if misses > 200:  # the budget is full: nothing much smaller is coming
                break
            continue
        selected.setdefault(position, set()).add(i)
        opened.add(chunk.encounter_id)
        if place != "xml":
            compact_days.setdefault(compact, set()).add(event.timestamp.date())
            compact_facts.add((compact, sheet.fact_of[position][i]))
            if place == "table":
                compact_times.add((compact, event.timestamp))
        else:
            entries.add((chunk.encounter_id, event.timestamp))
        used += step
        if shingles is not None:
            notes.append((shingles, position, i))
    return _EventPacking(selected={p: sorted(s) for p, s in selected.items()}, also_cited=also_cited,
                         estimated_tokens=used, complete=complete)


def assemble_event_context(
    index: PatientIndex,
    *,
    strategy: str,
    budget: int,
    counter: TokenCounter,
    event_ranking: Sequence[tuple[int, int]],
    overhead_tokens: int = 0,
    reserve_tokens: int = DEFAULT_ANSWER_RESERVE,
    time_anchor: datetime | None = None,
    dedupe_notes: bool = True,
    flowsheet_min_values: int | None = None,
    table_min_rows: int | None = None,
) -> AssembledContext:
    """Fit ranked events ((chunk position, event position), best first) into `budget` tokens, never more; the
    chosen events are rendered under their encounter headers in record order and every one is cited by id.

    A concept with at least `flowsheet_min_values` values under one encounter among the events that could fit is
    rendered as one flowsheet line (values with their times) rather than one XML event per value, and at least
    `table_min_rows` other events of one type under one encounter as a table (one plain row per event). Either
    way every event keeps its own time and is cited by id. None takes FLOWSHEET_MIN_VALUES / TABLE_MIN_ROWS,
    0 turns that rendering off."""
    available = budget - overhead_tokens - reserve_tokens
    if available <= 0:
        raise MedalignError(
            f"budget {budget} leaves no room for the record after the prompt ({overhead_tokens} tokens) "
            f"and the answer reserve ({reserve_tokens})"
        )
    costs = _costs(index, counter)
    fixed = costs.empty_context
    min_values = FLOWSHEET_MIN_VALUES if flowsheet_min_values is None else flowsheet_min_values
    min_rows = TABLE_MIN_ROWS if table_min_rows is None else table_min_rows
    layout = _Layout()
    if min_values or min_rows:
        layout = _layout(index, costs, _flowsheet_costs(index, counter), event_ranking, available, min_values,
                         min_rows, time_anchor)

    def render(selected: dict[int, list[int]]) -> tuple[str, int]:
        lines = _render_event_lines(index, _chronological(index, selected), layout)
        return "\n".join(lines) + "\n", _count_lines(index, counter, lines)

    # Per-item estimates are off from the exact count of the joined text (dates, separators, merges across
    # items), in either direction: pack by estimate, count exactly, rescale, keep the fullest packing that fits.
    best, packing, text, tokens = _fit_by_rescaling(
        available,
        lambda target: _pack_events(index, costs, event_ranking, target, fixed, time_anchor, dedupe_notes, layout),
        lambda packing: render(packing.selected), lambda packing: render(packing.selected)[0], attempts=6)
    if best is None:
        # still over (pathological tokenization): drop the lowest-ranked chosen events until it fits
        rank_of = {item: r for r, item in enumerate(event_ranking)}
        chosen = sorted(((p, i) for p, ids in packing.selected.items() for i in ids), key=lambda it: rank_of[it])
        while tokens > available and chosen:
            p, i = chosen.pop()
            packing.selected[p].remove(i)
            if not packing.selected[p]:
                del packing.selected[p]
            text, tokens = render(packing.selected)
        if tokens > available:
            raise MedalignError(f"budget {budget} is too small for even an empty record context ({tokens} tokens)")
        best = (packing, text, tokens)

    packing, text, tokens = best
    items = _chronological(index, packing.selected)
    citations, event_ids = _citations(index, items)
    cited = [extra for event_id in event_ids for extra in packing.also_cited.get(event_id, [])]
    positions = sorted(packing.selected, key=lambda p: index.chunks[p].ordinal)
    return AssembledContext(
        strategy=strategy,
        budget=budget,
        overhead_tokens=overhead_tokens,
        reserve_tokens=reserve_tokens,
        available_tokens=available,
        context_tokens=tokens,
        token_counter=counter.name,
        text=text,
        chunk_ids=[index.chunks[p].chunk_id for p in positions],
        event_ids=event_ids + [e for e in dict.fromkeys(cited) if e not in set(event_ids)],
        citations=citations,
        trimmed_chunk_ids=[index.chunks[p].chunk_id for p in positions
                           if len(packing.selected[p]) < len(index.chunks[p].events)],
    )
