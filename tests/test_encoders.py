"""Faster encoder paths are only usable when they reproduce the fp32 embeddings on every window."""

import importlib.util

import numpy as np
import pytest

from medalign_rag.chunking import chunk_record
from medalign_rag.errors import MedalignError
from medalign_rag.index.embedding import Embedder, load_sentence_model
from medalign_rag.index.encoders import EncoderSpec, cpu_supports_bf16, load_encoder, resolve_encoder
from medalign_rag.tokenization import default_counter
from tests.factories import make_record

VALIDATION_COSINE = 0.999


@pytest.fixture(scope="module")
def cohort_windows() -> list[str]:
    embedder = Embedder()
    counter = default_counter()
    windows = []
    for seed in range(2):
        # long notes too, so some windows are cut from one long line and run to the encoder's 256 tokens
        record = make_record(seed, n_encounters=3, max_events=25, note_words=300, patient_id=f"pt-{seed}")
        for chunk in chunk_record(record, counter):
            windows.extend(embedder.chunk_windows(chunk))
    return windows


@pytest.fixture(scope="module")
def fp32_reference(cohort_windows) -> np.ndarray:
    return load_sentence_model("all-MiniLM-L6-v2").encode(cohort_windows, batch_size=64, normalize_embeddings=True,
                                                           convert_to_numpy=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend,dtype", [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"),
                                           ("openvino", "fp32"), ("openvino", "bf16")])
def test_every_window_of_a_small_cohort_keeps_its_fp32_direction(backend, dtype, cohort_windows, fp32_reference):
    module = {"onnx": "onnxruntime", "openvino": "openvino"}.get(backend)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (extra: fast)")
    encoder = load_encoder("all-MiniLM-L6-v2", backend, dtype)
    assert encoder.spec == EncoderSpec(backend, dtype)
    vectors = encoder.encode(cohort_windows, batch_size=16)
    assert vectors.shape == fp32_reference.shape and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    cosine = (vectors * fp32_reference).sum(axis=1)
    worst = int(cosine.argmin())
    assert cosine.min() >= VALIDATION_COSINE, f"window {worst} drifts: cosine {cosine.min():.5f}"
    if dtype == "fp32":
        assert cosine.min() >= 0.99999


@pytest.mark.slow
def test_the_length_sorted_stream_returns_vectors_in_input_order(cohort_windows):
    encoder = load_encoder("all-MiniLM-L6-v2", "torch", "fp32")
    texts = cohort_windows[:16]
    lengths = encoder.token_lengths(texts)
    assert len(set(lengths)) > 5  # a real mix of lengths, so sorting actually reorders them
    together = encoder.encode(texts, batch_size=8)
    one_by_one = np.stack([encoder.encode([text])[0] for text in texts])
    assert np.abs(together - one_by_one).max() < 1e-5
    assert encoder.encode([], batch_size=8).shape == (0, encoder.dimension)


def test_unknown_backend_or_dtype_is_one_clear_error():
    with pytest.raises(MedalignError, match="unknown encoder backend 'tensorrt'"):
        EncoderSpec("tensorrt", "fp32")
    with pytest.raises(MedalignError, match="unknown encoder dtype 'fp8'"):
        EncoderSpec.parse("torch-fp8")
    assert EncoderSpec.parse("openvino-bf16") == EncoderSpec("openvino", "bf16")


def test_length_batches_bound_padding_and_keep_every_text_once():
    from hypothesis import given, settings, strategies as st

    from medalign_rag.index.encoders import MIN_FILL, _length_batches

    @settings(max_examples=200, deadline=None)
    @given(lengths=st.lists(st.integers(1, 256), max_size=200), batch_size=st.integers(1, 64))
    def check(lengths, batch_size):
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        batches = _length_batches(order, lengths, batch_size)
        assert [i for batch in batches for i in batch] == order
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            assert all(lengths[i] >= MIN_FILL * lengths[batch[0]] for i in batch)
        # a batch is only cut early when the next text would pad too much
        for batch, following in zip(batches, batches[1:]):
            assert len(batch) == batch_size or lengths[following[0]] < MIN_FILL * lengths[batch[0]]

    check()


def test_light_model_files_tokenize_like_sentence_transformers():
    """The ONNX/OpenVINO encoders read the model folder without sentence-transformers; same tokens, limit, size."""
    from medalign_rag.index.embedding import ModelFiles, load_sentence_model, packaged_model_path

    path = packaged_model_path()
    assert ModelFiles.readable(path)
    light, full = ModelFiles(path), load_sentence_model()
    assert light.max_seq_length == full.max_seq_length
    assert light.get_embedding_dimension() == full.get_embedding_dimension()
    texts = ["Encounter Inpatient 2019-03-04", "      <event type=\"lab\" name=\"HbA1c\">7.9 %</event>",
             "insulin glargine 10 units subcutaneous nightly; metformin 500 mg BID " * 40, "", "é 日本 ünïcödé"]
    for kwargs in ({"add_special_tokens": False, "return_offsets_mapping": True},
                   {"add_special_tokens": True, "truncation": True, "max_length": light.max_seq_length}):
        assert dict(light.tokenizer(texts, **kwargs)) == dict(full.tokenizer(texts, **kwargs))
    assert light.tokenizer.pad_token_id == full.tokenizer.pad_token_id


def test_auto_picks_bf16_only_where_the_cpu_has_bf16_units():
    """openvino-bf16 passed both validations but is emulated (slower than fp32) on CPUs without bf16 units."""
    if importlib.util.find_spec("openvino") is None:
        assert resolve_encoder("auto", bf16_native=True) == resolve_encoder("auto", bf16_native=False) == "torch-fp32"
    else:
        assert resolve_encoder("auto", bf16_native=True) == "openvino-bf16"
        assert resolve_encoder("auto", bf16_native=False) == "openvino-fp32"
    assert resolve_encoder("auto") == resolve_encoder("auto", bf16_native=cpu_supports_bf16())
    # a named encoder is never second-guessed
    assert resolve_encoder("torch-bf16", bf16_native=False) == "torch-bf16"
    assert resolve_encoder("openvino") == "openvino-fp32"


@pytest.mark.slow
def test_openvino_batches_rounded_to_16_tokens_give_the_unrounded_vectors(cohort_windows, monkeypatch):
    pytest.importorskip("openvino")
    encoder = load_encoder("all-MiniLM-L6-v2", "openvino", "fp32")
    assert encoder.width_multiple == 16
    texts = cohort_windows[:48]
    assert any(n % 16 for n in encoder.token_lengths(texts))  # some batches really get extra padding
    rounded = encoder.encode(texts, batch_size=8)
    monkeypatch.setattr(encoder, "width_multiple", 1)
    exact = encoder.encode(texts, batch_size=8)
    assert np.abs(rounded - exact).max() < 1e-5
