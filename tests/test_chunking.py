from hypothesis import given, settings, strategies as st

from medalign_rag.chunking import ChunkingSettings, chunk_record
from medalign_rag.tokenization import default_counter
from tests.factories import make_record


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), max_tokens=st.integers(64, 1500), note_words=st.integers(1, 400))
def test_every_event_in_exactly_one_chunk_and_no_chunk_over_the_maximum(seed, max_tokens, note_words):
    counter = default_counter()
    record = make_record(seed, n_encounters=4, max_events=30, note_words=note_words)
    chunks = chunk_record(record, counter, ChunkingSettings(max_tokens=max_tokens))

    chunked_ids = [eid for chunk in chunks for eid in chunk.event_ids]
    assert sorted(chunked_ids) == sorted(ev.event_id for _, ev in record.iter_events())
    assert len(chunked_ids) == len(set(chunked_ids))
    for chunk in chunks:
        assert chunk.token_count == counter.count(chunk.text)
        if chunk.token_count > max_tokens:
            assert len(chunk.events) == 1, "only a single oversized event may exceed the maximum"
        # every piece repeats the encounter header (type and dates)
        assert chunk.text.startswith("<encounter ")
        assert f'type="{chunk.encounter_type}"' in chunk.text.splitlines()[0]


def test_chunks_follow_record_order_and_split_long_encounters():
    record = make_record(3, n_encounters=3, max_events=60, note_words=200)
    chunks = chunk_record(record, default_counter(), ChunkingSettings(max_tokens=300))
    assert [c.ordinal for c in chunks] == sorted(c.ordinal for c in chunks)
    split = [c for c in chunks if c.n_parts > 1]
    assert split, "a 300-token maximum must split some encounter"
    for chunk in split:
        assert chunk.chunk_id == f"{chunk.encounter_id}#{chunk.part}"


def test_an_encounter_without_events_still_gets_a_chunk():
    record = make_record(1, n_encounters=2)
    record.encounters[1].events = []
    chunks = chunk_record(record, default_counter())
    assert any(c.encounter_id == record.encounters[1].encounter_id and not c.events for c in chunks)
