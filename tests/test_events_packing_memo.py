"""Event packing remembers per loaded index what depends only on the record (note shingles, which notes copy which,
each rendered line's token count). Remembering must not change a context: packed with warm memos or cold, after
other questions or not, the context is the same, and its token count is the exact count of its text."""

from datetime import timedelta

import numpy as np

from medalign_rag import context as context_module
from medalign_rag.context import _count_lines, assemble_context
from medalign_rag.records.model import EventKind
from medalign_rag.tokenization import default_counter
from tests.test_events import built  # noqa: F401  (the module fixture: two stays, notes copied forward)

COUNTER = default_counter()


def _forget(index) -> None:
    context_module._NOTE_COPIES.pop(index.state, None)
    context_module._LINE_COUNTS.pop(index.state, None)


def _rankings(index) -> list[list[tuple[int, int]]]:
    pairs = [(p, i) for p, c in enumerate(index.chunks) for i in range(len(c.events))]
    notes = [pair for pair in pairs if index.chunks[pair[0]].events[pair[1]].kind == EventKind.note]
    shuffled = []
    for seed in (1, 2, 3):
        order = list(pairs)
        np.random.default_rng(seed).shuffle(order)
        shuffled.append(order)
    return [notes + [p for p in pairs if p not in notes], list(reversed(pairs)), *shuffled]


def _pack(index, ranking, budget, anchor):
    assembled = assemble_context(index, strategy="events", budget=budget, counter=COUNTER, ranking=ranking,
                                 overhead_tokens=80, reserve_tokens=256, time_anchor=anchor)
    return assembled.model_dump()


def test_event_contexts_are_the_same_with_warm_or_cold_memos(built):  # noqa: F811
    index, _ = built
    stamps = sorted({ev.timestamp for c in index.chunks for ev in c.events})
    cases = [(r, budget, anchor) for r in range(5) for budget in (700, 2048, 8192)
             for anchor in (None, stamps[len(stamps) * 3 // 4] + timedelta(minutes=1))]
    rankings = _rankings(index)
    cold = {}
    for r, budget, anchor in cases:
        _forget(index)
        cold[(r, budget, anchor)] = _pack(index, rankings[r], budget, anchor)
    _forget(index)
    for r, budget, anchor in reversed(cases):  # warm: every other question packed first, in another order
        warm = _pack(index, rankings[r], budget, anchor)
        assert warm == cold[(r, budget, anchor)]
        assert warm["context_tokens"] == COUNTER.count(warm["text"]) <= warm["available_tokens"]
    # the copied-forward notes were packed once and the copies cited in some of these contexts
    assert any(c["text"].count("Progress note") == 1 and sum(e.startswith("note") for e in c["event_ids"]) > 1
               for c in cold.values())


def test_line_counts_are_exact_or_fall_back_to_the_whole_text(built):  # noqa: F811
    index, _ = built
    clean = ["<a>", "  <b x=\"1\">text, more</b>", "\tZ9 é 日;", "</a>"]
    assert _count_lines(index, COUNTER, clean) == COUNTER.count("\n".join(clean) + "\n")
    assert _count_lines(index, COUNTER, clean + clean) == COUNTER.count("\n".join(clean + clean) + "\n")
    unclean = ["a", "  ", "b", "\n  c"]  # "a\n  \n" joins across the newline: counted whole
    assert _count_lines(index, COUNTER, unclean) == COUNTER.count("\n".join(unclean) + "\n")
