"""Window encoders: one sentence-embedding model run by PyTorch, ONNX Runtime or OpenVINO, in fp32 or bf16.

Every backend returns the same thing (mean-pooled, L2-normalised float32 vectors, one per text) and batches the
same way: all texts of a call are tokenized once, sorted by token length and cut into batches, so a batch pads
only to its own longest text. Building many patients' windows in one call is what makes that pay off: per
patient, a few long note windows pad every batch of short lab lines.

The ONNX graph is exported from the packaged PyTorch model once, offline, into the user cache; OpenVINO reads the
same graph. Which backend and dtype built an index is part of its manifest, so switching never mixes vectors.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from medalign_rag.errors import MedalignError

EncoderBackend = Literal["torch", "onnx", "openvino"]
EncoderDtype = Literal["fp32", "bf16"]
BACKENDS: tuple[str, ...] = ("torch", "onnx", "openvino")
DTYPES: tuple[str, ...] = ("fp32", "bf16")
ENCODER_CACHE = Path(os.environ.get("MEDALIGN_RAG_CACHE", Path.home() / ".cache" / "medalign-rag")) / "encoders"
ONNX_OPSET = 17
REFERENCE_ENCODER = "torch-fp32"  # the reference every faster path is validated against
# "auto": the fastest encoder installed here that passed BOTH validations of issue 14: every window of a synthetic
# cohort within cosine 0.999 of torch-fp32 (tests/test_encoders.py) and FHIR-AgentBench evidence coverage within
# 0.005 of fp32 at every strategy and budget, on all 60 dev patients (benchmarks/RESULTS.md, "Encoder validation
# on FHIR-AgentBench"). openvino-bf16 passed both, but only where the CPU has bf16 units: elsewhere OpenVINO
# emulates bf16, slower than fp32, so those machines get openvino-fp32 (which matched torch-fp32 exactly).
DEFAULT_ENCODER = "auto"


@dataclass(frozen=True)
class EncoderSpec:
    """How windows are encoded; part of an index's build key and of the embedding cache's key."""

    backend: str = "torch"
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise MedalignError(f"unknown encoder backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise MedalignError(f"unknown encoder dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.dtype}"

    @classmethod
    def parse(cls, label: str) -> "EncoderSpec":
        backend, _, dtype = label.partition("-")
        return cls(backend, dtype or "fp32")


def resolve_encoder(label: str, *, bf16_native: bool | None = None) -> str:
    """A concrete "<backend>-<dtype>" for `label`; "auto" picks the fastest validated encoder installed here
    (`bf16_native`: whether this CPU has bf16 units; None asks the CPU)."""
    if label != "auto":
        return EncoderSpec.parse(label).label
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return REFERENCE_ENCODER
    if bf16_native is None:
        bf16_native = cpu_supports_bf16()
    return "openvino-bf16" if bf16_native else "openvino-fp32"


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (elsewhere bf16 is emulated and slower than fp32)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


class WindowEncoder:
    """Shared batching; subclasses run one padded batch (`_run`) on their runtime."""

    spec: EncoderSpec
    width_multiple = 1  # a batch pads to its longest text rounded up to this many tokens

    def __init__(self, sentence_model, spec: EncoderSpec) -> None:
        self.spec = spec
        self.sentence_model = sentence_model
        self.tokenizer = sentence_model.tokenizer
        self.max_length = int(getattr(sentence_model, "max_seq_length", 256) or 256)
        getter = (getattr(sentence_model, "get_embedding_dimension", None)
                  or sentence_model.get_sentence_embedding_dimension)
        self.dimension = int(getter())

    def token_lengths(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Normalised embeddings in input order; batches of `batch_size` texts of similar token length."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=self.max_length)
        ids = encoded["input_ids"]
        types = encoded.get("token_type_ids")
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
        pad_id = self.tokenizer.pad_token_id or 0
        for batch in _length_batches(order, [len(x) for x in ids], batch_size):
            width = -(-len(ids[batch[0]]) // self.width_multiple) * self.width_multiple
            input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
            attention = np.zeros((len(batch), width), dtype=np.int64)
            token_types = np.zeros((len(batch), width), dtype=np.int64)
            for row, index in enumerate(batch):
                n = len(ids[index])
                input_ids[row, :n] = ids[index]
                attention[row, :n] = 1
                if types is not None:
                    token_types[row, :n] = types[index]
            out[batch] = self._run(input_ids, attention, token_types)
        return out

    def _run(self, input_ids: np.ndarray, attention: np.ndarray, token_types: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# A batch ends early when the next text is shorter than this share of the batch's longest: in a small call (the few
# new windows of a grown record, lengths 32..256) one batch would pad every text to the longest, more than doubling
# the tokens encoded; in a large length-sorted stream neighbours are close in length and batches stay full.
MIN_FILL = 0.75


def _length_batches(order: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Cut `order` (longest first) into batches of at most `batch_size` whose rows pad by at most 1 - MIN_FILL."""
    batches: list[list[int]] = []
    for index in order:
        if not batches or len(batches[-1]) >= batch_size or lengths[index] < MIN_FILL * lengths[batches[-1][0]]:
            batches.append([])
        batches[-1].append(index)
    return batches


class TorchEncoder(WindowEncoder):
    """The sentence-transformers model itself; bf16 through CPU autocast (oneDNN's AMX / AVX512-BF16 kernels)."""

    def __init__(self, sentence_model, spec: EncoderSpec, device: str = "cpu") -> None:
        super().__init__(sentence_model, spec)
        import copy

        import torch

        self._torch = torch
        self.device = device
        transformer = sentence_model[0].auto_model
        # A GPU worker gets its own copy: the cached CPU model stays where other callers expect it.
        self.transformer = (copy.deepcopy(transformer).to(device) if device != "cpu" else transformer).eval()

    def _run(self, input_ids, attention, token_types):
        torch = self._torch
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16,
                                                    enabled=self.spec.dtype == "bf16"):
            hidden = self.transformer(input_ids=torch.from_numpy(input_ids).to(self.device),
                                      attention_mask=torch.from_numpy(attention).to(self.device),
                                      token_type_ids=torch.from_numpy(token_types).to(self.device)).last_hidden_state
        return _mean_pool_normalise(hidden.float().cpu().numpy(), attention)


def _mean_pool_normalise(hidden: np.ndarray, attention: np.ndarray) -> np.ndarray:
    mask = attention[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


def _model_fingerprint(model_dir: Path) -> str:
    """Identifies the model files an export came from (sizes and mtimes: cheap, and any reinstall changes them)."""
    digest = hashlib.sha256(str(model_dir.resolve()).encode())
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(model_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def exported_onnx_path(model_dir: Path) -> Path | None:
    """The ONNX graph already exported from `model_dir`, if any."""
    target = ENCODER_CACHE / _model_fingerprint(model_dir) / "model.onnx"
    return target if target.is_file() else None


def onnx_model_path(sentence_model, model_dir: Path) -> Path:
    """Export the transformer + mean pooling + normalisation to ONNX once; later calls reuse the file."""
    from filelock import FileLock

    target = ENCODER_CACHE / _model_fingerprint(model_dir) / "model.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / ".export.lock")):
        if target.is_file():
            return target
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self, transformer):
                super().__init__()
                self.transformer = transformer

            def forward(self, input_ids, attention_mask, token_type_ids):
                hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                          token_type_ids=token_type_ids).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2, dim=1)

        module = Pooled(sentence_model[0].auto_model).eval()
        example = sentence_model.tokenizer(["an example window", "a second, longer example window"],
                                           padding=True, return_tensors="pt")
        staging = target.with_suffix(f".{os.getpid()}.tmp")
        try:
            with torch.inference_mode():
                torch.onnx.export(
                    module,
                    (example["input_ids"], example["attention_mask"], example["token_type_ids"]),
                    str(staging),
                    input_names=["input_ids", "attention_mask", "token_type_ids"],
                    output_names=["embedding"],
                    dynamic_axes={name: {0: "batch", 1: "tokens"}
                                  for name in ("input_ids", "attention_mask", "token_type_ids")}
                    | {"embedding": {0: "batch"}},
                    opset_version=ONNX_OPSET,
                    dynamo=False,
                )
            os.replace(staging, target)
        except Exception as exc:
            staging.unlink(missing_ok=True)
            raise MedalignError(f"cannot export the embedding model to ONNX: {exc}", path=target) from exc
    return target


def _threads() -> int:
    """Torch's intra-op thread count (OMP_NUM_THREADS, else the cores), without importing torch when not loaded."""
    import sys

    if "torch" in sys.modules:
        return max(1, sys.modules["torch"].get_num_threads())
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class OnnxRuntimeEncoder(WindowEncoder):
    """ONNX Runtime on the CPU, fp32 (its CPU provider has no bf16 kernels for this graph)."""

    def __init__(self, sentence_model, spec: EncoderSpec, model_dir: Path) -> None:
        super().__init__(sentence_model, spec)
        if spec.dtype != "fp32":
            raise MedalignError("the onnx backend runs fp32 only on the CPU: use --encoder-dtype fp32")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MedalignError("the onnx encoder backend needs onnxruntime: pip install 'medalign-rag[fast]'") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _threads()
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: on a shared machine spinning workers steal the cores they wait on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_model_path(sentence_model, model_dir)), options,
                                            providers=["CPUExecutionProvider"])

    def _run(self, input_ids, attention, token_types):
        (vectors,) = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention,
                                             "token_type_ids": token_types})
        return np.asarray(vectors, dtype=np.float32)


class OpenVinoEncoder(WindowEncoder):
    """OpenVINO on the CPU; the precision hint is explicit because OpenVINO silently picks bf16 on AMX CPUs."""

    # Widths rounded up to 16 tokens (AMX tiles are 16 rows; fewer distinct shapes for the CPU plugin): bf16 ran
    # 9% and 20% faster than unrounded in two encoder-bench runs on a shared Sapphire Rapids machine; vectors equal
    # to the unrounded ones within 1e-5 (tests/test_encoders.py; benchmarks/RESULTS.md, 'Encoder').
    width_multiple = 16

    def __init__(self, sentence_model, spec: EncoderSpec, model_dir: Path, graph_path: Path | None = None) -> None:
        """`graph_path`: another graph of the same model (the benchmark's quantized candidates); default the export."""
        super().__init__(sentence_model, spec)
        try:
            import openvino as ov
        except ImportError as exc:
            raise MedalignError("the openvino encoder backend needs openvino: pip install 'medalign-rag[fast]'") from exc
        core = ov.Core()
        graph = core.read_model(str(graph_path or onnx_model_path(sentence_model, model_dir)))
        self.compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16" if spec.dtype == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": _threads(),
            "PERFORMANCE_HINT": "LATENCY",
        })
        self._requests = threading.local()  # an infer request serves one call at a time: one per thread

    def _run(self, input_ids, attention, token_types):
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        result = request.infer({"input_ids": input_ids, "attention_mask": attention,
                                     "token_type_ids": token_types})
        return np.asarray(next(iter(result.values())), dtype=np.float32).copy()


@lru_cache(maxsize=4)
def load_encoder(model_name: str, backend: str = "torch", dtype: str = "fp32", device: str = "cpu") -> WindowEncoder:
    """One encoder per (model, backend, dtype) per process: sessions are expensive, calls are thread-compatible."""
    from medalign_rag.index.embedding import load_model_for, resolve_model_path

    spec = EncoderSpec(backend, dtype)
    sentence_model = load_model_for(model_name, spec.backend)
    model_dir = Path(resolve_model_path(model_name))
    if spec.backend == "torch":
        return TorchEncoder(sentence_model, spec, device)
    if device != "cpu":
        raise MedalignError(f"the {backend} backend runs on the CPU here: use the torch encoder on {device}")
    if not model_dir.is_dir():
        raise MedalignError(f"the {backend} backend needs a local model folder, not {model_name!r}")
    if spec.backend == "onnx":
        return OnnxRuntimeEncoder(sentence_model, spec, model_dir)
    return OpenVinoEncoder(sentence_model, spec, model_dir)
