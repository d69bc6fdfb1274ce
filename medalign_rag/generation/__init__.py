"""Answer generation behind one interface: `create_generator("local" | "openai" | "vllm", **options)`.

Importing this package is cheap: backends (torch, transformers, httpx, vllm) load on first use.
"""

from medalign_rag.generation.base import (
    BackendOptions,
    GenerationFailed,
    GenerationResult,
    GenerationStream,
    GenerationTimeout,
    Generator,
    create_generator,
    known_backends,
    register_backend,
)
from medalign_rag.generation.prompt import PromptTemplate, load_prompt_template

__all__ = [
    "BackendOptions",
    "GenerationFailed",
    "GenerationResult",
    "GenerationStream",
    "GenerationTimeout",
    "Generator",
    "PromptTemplate",
    "create_generator",
    "known_backends",
    "load_prompt_template",
    "register_backend",
]
