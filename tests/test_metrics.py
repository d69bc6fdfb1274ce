"""Retrieval and answer metrics on small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.index.embedding import packaged_model_path
from medalign_rag.evaluation.metrics import (
    EmbeddingSimilarity,
    bootstrap_interval,
    evidence_coverage,
    load_default_embedding_model,
    retrieval_scores,
    rouge_l,
)

# --- retrieval ---------------------------------------------------------------------------------------------------


def test_retrieval_scores_hand_computed():
    qrels = {
        "q1": {"d1": 1, "d3": 1},
        "q2": {"d2": 2},
        "q3": {},  # no gold: left out
        "q4": {"d9": 0},  # only non-relevant judgements: left out
        "q5": {"d5": 1},  # nothing retrieved: all zeros
    }
    run = {
        "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6},
        "q2": {"d1": 0.9, "d2": 0.5},
        "q3": {"d1": 0.3},
    }
    scores = retrieval_scores(run, qrels, k_values=(1, 5))
    assert set(scores) == {"q1", "q2", "q5"}
    # q1: relevant d1 at rank 1, d3 at rank 3 (of 2 relevant).
    #   recall@1 = 1/2, recall@5 = 2/2, MRR = 1/1.
    #   DCG@5 = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1/log2(2) + 1/log2(3) = 1.6309 -> nDCG@5 = 0.91972.
    q1 = scores["q1"]
    assert q1["recall@1"] == pytest.approx(0.5)
    assert q1["recall@5"] == pytest.approx(1.0)
    assert q1["mrr"] == pytest.approx(1.0)
    assert q1["ndcg@1"] == pytest.approx(1.0)
    assert q1["ndcg@5"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # q2: its one relevant document (grade 2) is at rank 2.
    #   recall@1 = 0, recall@5 = 1, MRR = 1/2, nDCG@5 = (2/log2 3) / (2/log2 2) = 1/log2(3) = 0.63093.
    q2 = scores["q2"]
    assert q2["recall@1"] == 0.0
    assert q2["recall@5"] == pytest.approx(1.0)
    assert q2["mrr"] == pytest.approx(0.5)
    assert q2["ndcg@1"] == 0.0
    assert q2["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert scores["q5"] == {name: 0.0 for name in ("recall@1", "recall@5", "mrr", "ndcg@1", "ndcg@5")}


def test_retrieval_scores_default_cutoffs_and_edge_cases():
    scores = retrieval_scores({"q": {"a": 1.0}}, {"q": {"a": 1}})
    assert set(scores["q"]) == {"recall@1", "recall@5", "recall@10", "mrr", "ndcg@1", "ndcg@5", "ndcg@10"}
    assert all(value == pytest.approx(1.0) for value in scores["q"].values())
    assert retrieval_scores({"q": {"a": 1.0}}, {}) == {}
    with pytest.raises(MedalignError, match="positive integer"):
        retrieval_scores({"q": {"a": 1.0}}, {"q": {"a": 1}}, k_values=(0,))


def test_evidence_coverage():
    assert evidence_coverage(["e1", "e2", "e3", "e4"], ["e2", "e4", "e9"]) == 0.5
    assert evidence_coverage(["e1", "e1"], ["e1"]) == 1.0  # duplicates count once
    assert evidence_coverage(["e1"], []) == 0.0
    assert evidence_coverage([], ["e1"]) is None


# --- bootstrap ---------------------------------------------------------------------------------------------------


def test_bootstrap_degenerate_samples_do_not_produce_nan():
    assert bootstrap_interval([0.3]) == (0.3, 0.3, 0.3)
    assert bootstrap_interval([0.5] * 10) == (0.5, 0.5, 0.5)
    assert bootstrap_interval([0.5] * 10, method="BCa") == (0.5, 0.5, 0.5)
    assert bootstrap_interval([None, 0.2, None]) == (0.2, 0.2, 0.2)  # None = metric not applicable
    assert all(math.isnan(x) for x in bootstrap_interval([]))


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    values = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]  # mean 0.6
    mean, lo, hi = bootstrap_interval(values, n_resamples=1000, seed=7)
    assert mean == pytest.approx(0.6)
    assert 0.0 <= lo < mean < hi <= 1.0
    # Standard error of a 0/1 mean is sqrt(.6*.4/10) = 0.155: a 95% interval is roughly +-0.3 wide each way.
    assert 0.15 < hi - lo < 0.8
    assert bootstrap_interval(values, n_resamples=1000, seed=7) == (mean, lo, hi)
    narrower = bootstrap_interval(values, confidence=0.5, n_resamples=1000, seed=7)
    assert narrower[2] - narrower[1] < hi - lo
    bca = bootstrap_interval(values, n_resamples=1000, seed=7, method="BCa")
    assert bca[1] < bca[0] < bca[2]


def test_bootstrap_rejects_bad_input():
    with pytest.raises(MedalignError):
        bootstrap_interval([0.1, float("nan")])
    with pytest.raises(MedalignError):
        bootstrap_interval([0.1, 0.2], confidence=1.5)


# --- ROUGE-L -----------------------------------------------------------------------------------------------------


def test_rouge_l_hand_computed_lcs():
    # "the cat sat on the mat" vs "the cat is on the mat": LCS = "the cat on the mat" = 5 of 6 tokens each,
    # so P = R = F = 5/6.
    assert rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(5 / 6)
    # "the patient was given aspirin daily" (6) vs "aspirin was given" (3): LCS = "was given" = 2.
    # P = 2/6, R = 2/3, F = 2PR/(P+R) = (4/9)/1 = 4/9.
    assert rouge_l("the patient was given aspirin daily", ["aspirin was given"]) == pytest.approx(4 / 9)


def test_rouge_l_takes_best_reference_stems_and_ignores_case():
    assert rouge_l("the cat sat on the mat", ["a dog barked", "the cat is on the mat"]) == pytest.approx(5 / 6)
    # Porter stemming: running -> run, dogs -> dog.
    assert rouge_l("Running Dogs", ["run dog"]) == pytest.approx(1.0)
    assert rouge_l("", ["anything"]) == 0.0


def test_rouge_l_rejects_missing_references():
    with pytest.raises(MedalignError):
        rouge_l("text", [])
    with pytest.raises(MedalignError):
        rouge_l("text", "a single string")  # type: ignore[arg-type]


# --- embedding similarity (loads the real packaged model) --------------------------------------------------------


@pytest.fixture(scope="module")
def similarity() -> EmbeddingSimilarity:
    return EmbeddingSimilarity(load_default_embedding_model(), batch_size=4)


@pytest.mark.slow
def test_packaged_model_is_found_in_site_packages():
    folder = packaged_model_path()
    assert (folder / "modules.json").is_file()
    assert "site-packages" in str(folder) or "dist-packages" in str(folder)


@pytest.mark.slow
def test_embedding_similarity_behaves_like_bertscore(similarity: EmbeddingSimilarity):
    reference = "The patient was started on metformin for type 2 diabetes."
    paraphrase = "Metformin was begun to treat the patient's type 2 diabetes."
    unrelated = "The chest x-ray shows no acute fracture."
    identical, close, far = similarity.score([reference, paraphrase, unrelated], [[reference]] * 3)
    assert identical == pytest.approx(1.0, abs=1e-5)
    assert far < close < identical
    # Best over references; and F1 is symmetric in prediction and reference.
    assert similarity.score([paraphrase], [[unrelated, reference]]) == pytest.approx([close])
    assert similarity.score([reference], [[paraphrase]]) == pytest.approx([close])
    assert similarity.score([""], [[reference]]) == [0.0]


@pytest.mark.slow
def test_embedding_similarity_matches_a_direct_greedy_computation(similarity: EmbeddingSimilarity):
    prediction, reference = "aspirin daily", "daily aspirin 81 mg"
    model = similarity.model
    vectors = []
    for text in (prediction, reference):
        tokens = model.encode([text], output_value="token_embeddings", convert_to_numpy=False)[0].numpy()
        tokens = tokens[1:-1]  # drop [CLS] and [SEP]
        vectors.append(tokens / np.linalg.norm(tokens, axis=1, keepdims=True))
    sim = vectors[0] @ vectors[1].T
    precision, recall = sim.max(axis=1).mean(), sim.max(axis=0).mean()
    expected = 2 * precision * recall / (precision + recall)
    assert similarity.score([prediction], [[reference]])[0] == pytest.approx(float(expected), abs=1e-5)


def test_embedding_similarity_rejects_unpaired_input(similarity: EmbeddingSimilarity):
    with pytest.raises(MedalignError, match="pair up"):
        similarity.score(["a", "b"], [["a"]])
    with pytest.raises(MedalignError, match="non-empty list"):
        similarity.score(["a"], [[]])


def test_retrieval_scores_reject_non_numeric_input():
    with pytest.raises(MedalignError, match=r"qrels\['q'\]\['a'\]"):
        retrieval_scores({"q": {"a": 1.0}}, {"q": {"a": "relevant"}})  # type: ignore[dict-item]
    with pytest.raises(MedalignError, match=r"run\['q'\]\['a'\]"):
        retrieval_scores({"q": {"a": float("nan")}}, {"q": {"a": 1}})
