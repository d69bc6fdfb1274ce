"""The fast chunk packing (per-line exact counts, bisection, one render per call) returns exactly what the packing
did before it (tests/reference_packing.py: every attempt rendered and counted whole), and its per-line counts are
exact whenever it uses them."""

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from medalign_rag.chunking import ChunkingSettings, chunk_record
from medalign_rag.context import _costs, assemble_context, line_splits_cleanly
from medalign_rag.errors import MedalignError
from medalign_rag.index.store import IndexManifest, PatientIndex
from medalign_rag.retrieval import make_retriever
from medalign_rag.tokenization import HuggingFaceCounter, default_counter
from tests import reference_packing
from tests.test_context import full_ranking, lexical_index

import faiss

COUNTER = default_counter()


def _outcome(assemble, index, counter, **kwargs):
    try:
        return assemble(index, counter=counter, **kwargs)
    except MedalignError as error:  # a budget too small is refused the same way
        return str(error)


def _same(index, counter, **kwargs) -> None:
    ours = _outcome(assemble_context, index, counter, **kwargs)
    reference = _outcome(reference_packing.assemble_context, index, counter, **kwargs)
    if isinstance(reference, str):
        assert ours == reference
        return
    assert ours.model_dump() == reference.model_dump()
    assert ours.context_tokens == counter.count(ours.text) <= ours.available_tokens


def _anchor(index: PatientIndex, anchor_seed: int | None):
    if anchor_seed is None:
        return None
    stamps = sorted({ev.timestamp for c in index.chunks for ev in c.events})
    return stamps[anchor_seed % len(stamps)] + timedelta(seconds=anchor_seed % 3 - 1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 5000), budget=st.integers(400, 12000), overhead=st.integers(0, 300),
       shuffle_seed=st.integers(0, 100), full=st.booleans(), anchor_seed=st.none() | st.integers(0, 10_000),
       max_tokens=st.sampled_from([64, 256, 400]))
def test_fast_packing_matches_the_reference(seed, budget, overhead, shuffle_seed, full, anchor_seed, max_tokens):
    index = lexical_index(seed, max_tokens=max_tokens)
    if full:
        order = full_ranking(index)
    else:
        ranking = list(range(len(index.chunks)))
        np.random.default_rng(shuffle_seed).shuffle(ranking)
        order = {"ranking": ranking, "newest_events_first": bool(shuffle_seed % 2)}
    _same(index, COUNTER, strategy="test", budget=budget, overhead_tokens=overhead, reserve_tokens=256,
          time_anchor=_anchor(index, anchor_seed), **order)


def _synthetic_index(tmp_path: Path) -> PatientIndex:
    from medalign_rag.datasets.synthetic import generate_cohort
    from medalign_rag.records.dataset import open_data_folder

    generate_cohort(tmp_path / "cohort", n_patients=3, seed=7)
    data = open_data_folder(tmp_path / "cohort")
    record = max((data.load_record(p) for p in data.patient_ids()), key=lambda r: sum(len(e.events)
                                                                                      for e in r.encounters))
    chunks = chunk_record(record, COUNTER, ChunkingSettings())
    manifest = IndexManifest(patient_id=record.patient_id, embedding_model="none", dimension=4,
                             chunking=ChunkingSettings(), window_tokens=256, overlap_tokens=32,
                             token_counter=COUNTER.name, source_sha256="x", n_chunks=len(chunks), n_windows=0)
    return PatientIndex(manifest=manifest, chunks=chunks, window_chunk=np.zeros(0, np.int32),
                        vectors=faiss.IndexFlatIP(4))


@pytest.fixture(scope="module")
def synthetic_index(tmp_path_factory) -> PatientIndex:
    return _synthetic_index(tmp_path_factory.mktemp("synthetic"))


@pytest.mark.parametrize("strategy", ["full", "recency", "bm25"])
def test_synthetic_record_packs_as_before(synthetic_index, strategy):
    index = synthetic_index
    stamps = sorted({ev.timestamp for c in index.chunks for ev in c.events})
    questions = ["most recent hemoglobin A1c", "blood pressure medications", "any admission for chest pain"]
    for question in questions:
        for anchor in (None, stamps[len(stamps) // 2], stamps[-1]):
            retriever = make_retriever(strategy, index, embedder=None, time_anchor=anchor)
            ranking = [p for p, _ in retriever.rank(question)]
            for budget in (1024, 2048, 4096, 8192, 32768):
                _same(index, COUNTER, strategy=strategy, budget=budget, ranking=ranking, overhead_tokens=120,
                      newest_events_first=retriever.newest_events_first, time_anchor=anchor)


def test_other_tokenizers_pack_as_before_by_rendering(synthetic_index):
    """A tokenizer whose pre-tokenizer joins across newlines (BERT WordPiece here) is counted on the rendered text."""
    from medalign_rag.index.embedding import load_sentence_model

    counter = HuggingFaceCounter(load_sentence_model().tokenizer, name="minilm-wordpiece")
    index = synthetic_index
    assert _costs(index, counter).exact is None
    assert _costs(index, COUNTER).exact is not None
    ranking = [p for p, _ in make_retriever("bm25", index, embedder=None, time_anchor=None).rank("insulin")]
    for budget in (1024, 4096, 16384):
        _same(index, counter, strategy="bm25", budget=budget, ranking=ranking, overhead_tokens=50)


_LINE_CHARS = st.sampled_from(list("ab Z9<>/=\"'.,;:-_\t\n\r") + ["\u00a0", "\u2028", "\x1c", "é", "日", "'s", "  "])


@settings(max_examples=600, deadline=None)
@given(lines=st.lists(st.lists(_LINE_CHARS, max_size=12).map("".join), min_size=1, max_size=8))
def test_lines_that_split_cleanly_count_additively(lines):
    """The guarantee `ExactCounts` rests on: cl100k counts lines joined by "\\n" as the sum of each line + "\\n"."""
    assume(all(line_splits_cleanly(line) for line in lines))
    text = "\n".join(lines) + "\n"
    assert COUNTER.count(text) == sum(COUNTER.count(line + "\n") for line in lines)


def test_lines_that_do_not_split_cleanly_are_recognised():
    assert not line_splits_cleanly("")
    assert not line_splits_cleanly("\nabc")
    assert not line_splits_cleanly("   \r\n  <x>")
    assert not line_splits_cleanly("  ")  # found by the property test: "a\n  \n" is 2 tokens, not 1 + 2
    assert line_splits_cleanly("      <event>a\n\nb</event>")
    # the reason: here the newlines merge into one token across the join
    assert COUNTER.count("a>\n\n") != COUNTER.count("a>\n") + COUNTER.count("\n")
