"""The one interface every answering backend implements, and the registry that builds them by name.

Backends live in their own modules and are imported only when asked for, so importing
`medalign_rag.generation` never pulls in torch, transformers or vllm.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator as PythonGenerator, Iterator
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medalign_rag.errors import MedalignError
from medalign_rag.tokenization import TokenCounter


class GenerationResult(BaseModel):
    """One answer. Token counts are in the model's own tokens, chat template included in `prompt_tokens`."""

    model_config = ConfigDict(frozen=True)

    text: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_s: float = Field(ge=0.0)


class GenerationFailed(MedalignError):
    """The answering model could not answer: server down or unreachable, or it failed while answering.

    A server maps it to 502; the input was fine, the backend was not.
    """


class GenerationTimeout(GenerationFailed):
    """The answering model did not answer in time (a server maps it to 504)."""


class GenerationStream(Iterator[str]):
    """An answer as it is produced: iterate for text pieces; `result` holds the whole answer once exhausted.

    Wraps a Python generator that yields the pieces and *returns* the final GenerationResult (token counts
    included), so each backend writes its streaming loop as one plain function.
    """

    def __init__(self, pieces: PythonGenerator[str, None, GenerationResult]) -> None:
        self._pieces = pieces
        #: The complete answer, set when the stream is exhausted (None before, or when closed early).
        self.result: GenerationResult | None = None

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as finished:
            self.result = finished.value
            raise

    def close(self) -> None:
        """Stop early (e.g. the client went away); the backend stops producing as soon as it can."""
        self._pieces.close()


class BackendOptions(BaseModel):
    """Base for each backend's options: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Generator(ABC):
    """An answering model. Prompts are user messages; each backend wraps them in its own chat template."""

    #: Registry name of the backend ("local", "openai", "vllm").
    backend: ClassVar[str] = ""
    #: The pydantic model of the keyword options `create_generator` accepts for this backend.
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    name: str
    tokenizer: TokenCounter
    context_length: int
    #: True when `stream()` yields pieces as the model produces them (not just the finished answer at the end).
    supports_streaming: ClassVar[bool] = False

    @abstractmethod
    def generate(
        self, prompts: list[str], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> list[GenerationResult]:
        """Answer every prompt; results come back in the order of `prompts`."""

    def stream(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.0) -> GenerationStream:
        """Answer one prompt piece by piece. This default answers with `generate` and yields the whole text once;
        backends that can stream override it (and set `supports_streaming`)."""
        check_generation_arguments([prompt], max_tokens, temperature)

        def whole_answer() -> PythonGenerator[str, None, GenerationResult]:
            result = self.generate([prompt], max_tokens=max_tokens, temperature=temperature)[0]
            yield result.text
            return result

        return GenerationStream(whole_answer())

    def count_prompt_tokens(self, prompt: str) -> int:
        """Tokens the model will read for `prompt`, chat template included where the backend knows it.

        The default counts the bare prompt; backends that hold the model's chat template override it.
        """
        return self.tokenizer.count(prompt)

    def close(self) -> None:
        """Release the model or connections. Safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ChatTemplateMixin:
    """For backends that hold a Hugging Face tokenizer (`_hf_tokenizer`) with the model's chat template."""

    _hf_tokenizer: Any

    def chat_text(self, prompt: str) -> str:
        """`prompt` as the model reads it: wrapped in its chat template, ready for the assistant's turn."""
        return str(
            self._hf_tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        )

    def count_prompt_tokens(self, prompt: str) -> int:
        return len(self._hf_tokenizer.encode(self.chat_text(prompt), add_special_tokens=False))


def check_generation_arguments(prompts: list[str], max_tokens: int, temperature: float) -> None:
    """Shared argument checks, so every backend rejects the same bad calls with the same words."""
    if isinstance(prompts, str):
        raise MedalignError("generate() takes a list of prompts, not a single string")
    if max_tokens < 1:
        raise MedalignError(f"max_tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise MedalignError(f"temperature must be >= 0, got {temperature}")


# Backends known before their module is imported: name -> module that registers it on import.
_BACKEND_MODULES: dict[str, str] = {
    "local": "medalign_rag.generation.local",
    "openai": "medalign_rag.generation.openai_http",
    "vllm": "medalign_rag.generation.vllm_backend",
}
_BACKENDS: dict[str, type[Generator]] = {}

G = TypeVar("G", bound=type[Generator])


def register_backend(name: str) -> Callable[[G], G]:
    """Class decorator: make a Generator subclass available to `create_generator(name, ...)`."""

    def decorate(cls: G) -> G:
        existing = _BACKENDS.get(name)
        if existing is not None and existing is not cls:
            raise MedalignError(
                f"generation backend {name!r} is registered twice ({existing.__name__}, {cls.__name__})"
            )
        cls.backend = name
        _BACKENDS[name] = cls
        return cls

    return decorate


def known_backends() -> list[str]:
    return sorted(set(_BACKEND_MODULES) | set(_BACKENDS))


def backend_class(backend: str) -> type[Generator]:
    """The Generator class for `backend`, importing its module on first use."""
    if backend not in _BACKENDS and backend in _BACKEND_MODULES:
        importlib.import_module(_BACKEND_MODULES[backend])
    cls = _BACKENDS.get(backend)
    if cls is None:
        raise MedalignError(f"unknown generation backend {backend!r}; known backends: {', '.join(known_backends())}")
    return cls


def validate_options(backend: str, options: dict[str, Any]) -> BackendOptions:
    """Check `options` against the backend's option model; errors name the offending option."""
    cls = backend_class(backend)
    try:
        return cls.Options.model_validate(options)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"]) or "options"
            message = "unknown option" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"{where}: {message}")
        accepted = ", ".join(cls.Options.model_fields)
        raise MedalignError(
            f"bad options for generation backend {backend!r}: {'; '.join(problems)} (accepted: {accepted})"
        ) from None


def create_generator(backend: str, **options: Any) -> Generator:
    """Build the generator registered as `backend` ("local", "openai", "vllm") from keyword options."""
    cls = backend_class(backend)
    return cls(validate_options(backend, options))  # type: ignore[call-arg]
