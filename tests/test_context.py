import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from medalign_rag.chunking import ChunkingSettings, chunk_record
from medalign_rag.context import assemble_context
from medalign_rag.errors import MedalignError
from medalign_rag.index.store import IndexManifest, PatientIndex
from medalign_rag.tokenization import default_counter
from tests.factories import make_record

import faiss
import numpy as np


def full_ranking(index: PatientIndex) -> dict:
    """What the registered `full` strategy hands the assembler."""
    from medalign_rag.retrieval import FullRecordRetriever

    return {"ranking": [p for p, _ in FullRecordRetriever(index).rank("")], "newest_events_first": True}


def lexical_index(seed: int, n_encounters: int = 8, max_tokens: int = 400) -> PatientIndex:
    """An index without vectors: context assembly only needs the chunks."""
    record = make_record(seed, n_encounters=n_encounters, max_events=40, note_words=120)
    chunks = chunk_record(record, default_counter(), ChunkingSettings(max_tokens=max_tokens))
    manifest = IndexManifest(patient_id=record.patient_id, embedding_model="none", dimension=4,
                             chunking=ChunkingSettings(max_tokens=max_tokens), window_tokens=256, overlap_tokens=32,
                             token_counter="cl100k_base", source_sha256="x", n_chunks=len(chunks), n_windows=0)
    return PatientIndex(manifest=manifest, chunks=chunks, window_chunk=np.zeros(0, np.int32),
                        vectors=faiss.IndexFlatIP(4))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 5000), budget=st.integers(600, 9000), overhead=st.integers(0, 200),
       shuffle_seed=st.integers(0, 100), full=st.booleans())
def test_context_never_exceeds_the_budget(seed, budget, overhead, shuffle_seed, full):
    index = lexical_index(seed)
    counter = default_counter()
    if full:
        order = full_ranking(index)
    else:
        ranking = list(range(len(index.chunks)))
        np.random.default_rng(shuffle_seed).shuffle(ranking)
        order = {"ranking": ranking}
    assembled = assemble_context(index, strategy="full" if full else "test", budget=budget, counter=counter,
                                 overhead_tokens=overhead, reserve_tokens=256, **order)
    assert assembled.context_tokens == counter.count(assembled.text)
    assert assembled.context_tokens <= budget - overhead - 256
    # what went in is exactly what the text shows, in chronological order
    all_events = {ev.event_id: ev for c in index.chunks for ev in c.events}
    stamps = [all_events[e].timestamp for e in assembled.event_ids]
    assert stamps == sorted(stamps)
    assert len(set(assembled.event_ids)) == len(assembled.event_ids)


def test_full_keeps_the_most_recent_part():
    index = lexical_index(11, n_encounters=12)
    assembled = assemble_context(index, strategy="full", budget=2048, counter=default_counter(),
                                 **full_ranking(index))
    ordered = [ev.event_id for c in index.chunks for ev in c.events]
    kept = assembled.event_ids
    assert kept and len(kept) < len(ordered)
    assert kept == ordered[-len(kept):], "full must keep a suffix of the record"


def test_ranked_chunks_are_packed_in_rank_order():
    index = lexical_index(5, n_encounters=10)
    ranking = list(reversed(range(len(index.chunks))))[::2] + list(reversed(range(len(index.chunks))))[1::2]
    assembled = assemble_context(index, strategy="test", budget=2048, counter=default_counter(), ranking=ranking)
    first = index.chunks[ranking[0]]
    assert first.chunk_id in assembled.chunk_ids
    chosen = set(assembled.chunk_ids)
    # a chunk is only chosen if every better-ranked chunk is chosen too (the last one may be trimmed), except a
    # chunk skipped because its first event alone was over the room left at its turn (so over the room left now)
    counter = default_counter()
    room_now = assembled.available_tokens - assembled.context_tokens
    last_chosen = max(r for r, p in enumerate(ranking) if index.chunks[p].chunk_id in chosen)
    for rank, position in enumerate(ranking[:last_chosen]):
        chunk = index.chunks[position]
        if chunk.chunk_id not in chosen:
            from medalign_rag.records.serialize import render_event_line

            first_line = render_event_line(chunk.events[0], include_ids=False)
            assert counter.count(first_line) > room_now, f"rank {rank} was skipped though its first event fits"


def test_a_ranked_chunk_too_big_to_start_does_not_leave_the_context_empty():
    from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord
    from datetime import datetime

    long_note = " ".join(f"word{i}" for i in range(3000))
    record = PatientRecord(patient_id="p1", encounters=[
        Encounter(encounter_id="e1", start=datetime(2020, 1, 1), events=[
            Event(event_id="note", timestamp=datetime(2020, 1, 1, 9), kind=EventKind.note, name="progress",
                  text=long_note)]),
        Encounter(encounter_id="e2", start=datetime(2021, 1, 1), events=[
            Event(event_id="a1c", timestamp=datetime(2021, 1, 1, 9), kind=EventKind.measurement,
                  name="Hemoglobin A1c", value="7.1", unit="%")]),
    ])
    chunks = chunk_record(record, default_counter(), ChunkingSettings(max_tokens=256))
    manifest = IndexManifest(patient_id="p1", embedding_model="none", dimension=4, chunking=ChunkingSettings(),
                             window_tokens=256, overlap_tokens=32, token_counter="cl100k_base", source_sha256="x",
                             n_chunks=len(chunks), n_windows=0)
    index = PatientIndex(manifest=manifest, chunks=chunks, window_chunk=np.zeros(0, np.int32),
                         vectors=faiss.IndexFlatIP(4))
    note_chunk = next(p for p, c in enumerate(chunks) if "note" in c.event_ids)
    ranking = [note_chunk] + [p for p in range(len(chunks)) if p != note_chunk]
    assembled = assemble_context(index, strategy="test", budget=1024, counter=default_counter(), ranking=ranking)
    assert assembled.event_ids == ["a1c"], "the next ranked chunk fills the room the oversized note left"


def test_time_anchor_hides_later_events():
    index = lexical_index(7, n_encounters=10)
    middle = index.chunks[len(index.chunks) // 2].start
    assembled = assemble_context(index, strategy="full", budget=32768, counter=default_counter(), time_anchor=middle,
                                 **full_ranking(index))
    all_events = {ev.event_id: ev for c in index.chunks for ev in c.events}
    assert assembled.event_ids
    assert all(all_events[e].timestamp <= middle for e in assembled.event_ids)


def test_budget_smaller_than_the_prompt_is_a_clear_error():
    index = lexical_index(1)
    with pytest.raises(MedalignError, match="no room"):
        assemble_context(index, strategy="full", budget=300, counter=default_counter(), overhead_tokens=100,
                         **full_ranking(index))


def test_rendered_context_is_well_formed_xml():
    import xml.etree.ElementTree as ET

    index = lexical_index(2)
    ranking = [len(index.chunks) - 1, 0]
    assembled = assemble_context(index, strategy="test", budget=4096, counter=default_counter(), ranking=ranking)
    text, citations, event_ids = assembled.text, assembled.citations, assembled.event_ids
    root = ET.fromstring(text)
    assert root.tag == "eventstream"
    assert len(root.findall("encounter")) == len(citations)
