"""The GPU encoder benchmark ships a pruned model to the offline GPU machine; its vectors must be the original's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from gpu_encoder_bench import rebuild_model, write_small_model  # noqa: E402

from medalign_rag.index.embedding import resolve_model_path  # noqa: E402
from medalign_rag.index.encoders import load_encoder  # noqa: E402

TEXTS = ["<lab>Potassium 4.1 mmol/L</lab>", "Patient admitted with chest pain; troponin negative.",
         "<med>heparin 5000 units subcutaneous</med>"]


def test_rebuilt_model_embeds_the_windows_it_was_cut_for_exactly_and_nothing_else(tmp_path):
    original = load_encoder("all-MiniLM-L6-v2", "torch", "fp32")
    ids = original.tokenizer(TEXTS, add_special_tokens=True)["input_ids"]
    used = np.array(sorted({i for row in ids for i in row}), dtype=np.int64)
    total = write_small_model(Path(resolve_model_path("all-MiniLM-L6-v2")), used, tmp_path / "prepared")
    assert total > 10 * len(used)
    rebuilt = load_encoder(str(rebuild_model(tmp_path / "prepared", tmp_path / "model")), "torch", "fp32")

    assert np.abs(rebuilt.encode(TEXTS) - original.encode(TEXTS)).max() < 1e-6
    # A word whose rows were dropped embeds differently: the pruning is real, so the equality above means something.
    unseen = ["zebra xylophone volcano"]
    assert float(rebuilt.encode(unseen)[0] @ original.encode(unseen)[0]) < 0.99
