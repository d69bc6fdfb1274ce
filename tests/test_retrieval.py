"""The retriever registry and reciprocal rank fusion (against ranx's reference implementation)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from medalign_rag.errors import MedalignError
from medalign_rag.retrieval import PatientRetriever, check_strategies, register_retriever, strategy_names
from medalign_rag.retrieval.hybrid import reciprocal_rank_fusion


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 30), lists=st.integers(1, 3), seed=st.integers(0, 10_000), k=st.sampled_from([1, 10, 60]))
def test_rrf_matches_ranx(n, lists, seed, k):
    from ranx import Run, fuse

    rng = np.random.default_rng(seed)
    score_lists = [rng.permutation(n).astype(float) for _ in range(lists)]  # distinct scores: no tie conventions
    ours = reciprocal_rank_fusion(score_lists, k=k)
    runs = [Run({"q": {f"d{i}": float(s[i]) for i in range(n)}}) for s in score_lists]
    theirs = fuse(runs=runs, method="rrf", params={"k": k}).to_dict()["q"] if lists > 1 else None
    if theirs is None:  # ranx fuses two or more runs; one run's RRF is 1 / (k + rank)
        ranks = np.argsort(np.argsort(-score_lists[0])) + 1
        theirs = {f"d{i}": 1.0 / (k + ranks[i]) for i in range(n)}
    assert np.allclose(ours, [theirs[f"d{i}"] for i in range(n)])


def test_every_user_visible_list_comes_from_the_registry():
    from medalign_rag.config import RunConfig

    names = strategy_names()
    assert names[:2] == ("full", "recency") and names[-1] == "oracle"
    assert {"bm25", "dense", "hybrid", "temporal"} <= set(names)
    assert tuple(RunConfig(data="x").strategies) == names
    with pytest.raises(MedalignError, match="choose from full, recency"):
        check_strategies(["nonsense"])


def test_a_new_strategy_is_one_registered_class(tmp_path):
    @register_retriever("test-reverse-recency")
    class ReverseRecency(PatientRetriever):
        def scores(self, query):
            return np.asarray([-c.ordinal for c in self.index.chunks], dtype=float)

    try:
        assert "test-reverse-recency" in strategy_names()
        check_strategies(["test-reverse-recency"])
    finally:
        from medalign_rag.retrieval import registry

        registry._REGISTRY.pop("test-reverse-recency")
    assert "test-reverse-recency" not in strategy_names()
