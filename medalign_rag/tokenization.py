"""Token counting behind one small interface: budgets are counted in the answering model's own tokens."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class TokenCounter(Protocol):
    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> str: ...

    def count(self, text: str) -> int: ...


class TiktokenCounter:
    """cl100k_base, loaded from the cache llama-index-core ships, so nothing is downloaded."""

    name = "cl100k_base"

    def __init__(self) -> None:
        import llama_index.core  # noqa: F401  (import locates the bundled cache)

        cache = os.path.join(os.path.dirname(llama_index.core.__file__), "_static", "tiktoken_cache")
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", cache)
        import tiktoken

        self._encoding = tiktoken.get_encoding("cl100k_base")

    def encode(self, text: str) -> list[int]:
        # Record text is data, not chat markup: special-token strings in it are counted as ordinary text.
        return self._encoding.encode_ordinary(text)

    def decode(self, tokens: Sequence[int]) -> str:
        return self._encoding.decode(list(tokens))

    def count(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        # encode_batch's thread pool costs more than it saves on short lines
        encode = self._encoding.encode_ordinary
        return [len(encode(t)) for t in texts]


class HuggingFaceCounter:
    """Any transformers tokenizer (a model's own), e.g. the local backend's or one named in the config."""

    def __init__(self, tokenizer, name: str | None = None) -> None:
        self._tokenizer = tokenizer
        self.name: str = name or str(getattr(tokenizer, "name_or_path", None) or "hf-tokenizer")

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> "HuggingFaceCounter":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(name_or_path, **kwargs), name=name_or_path)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def decode(self, tokens: Sequence[int]) -> str:
        return self._tokenizer.decode(list(tokens))

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def count_many(counter: TokenCounter, texts: Sequence[str]) -> list[int]:
    batch = getattr(counter, "count_many", None)
    return batch(texts) if batch else [counter.count(t) for t in texts]


@lru_cache(maxsize=1)
def default_counter() -> TiktokenCounter:
    return TiktokenCounter()
