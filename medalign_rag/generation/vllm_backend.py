"""In-process vLLM (GPU): one `vllm.LLM` with prefix caching, batched chat generation.

Prefix caching pays off here because many instructions share a patient's long EHR prefix.
Needs `pip install vllm` and a GPU; importing this module does not import vllm until a generator is built.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from medalign_rag.errors import MedalignError
from medalign_rag.generation.base import (
    BackendOptions,
    ChatTemplateMixin,
    GenerationResult,
    Generator,
    check_generation_arguments,
    register_backend,
)
from medalign_rag.tokenization import HuggingFaceCounter


class VLLMOptions(BackendOptions):
    model: str = Field(description="HF model name (already cached) or local folder")
    tokenizer: str | None = Field(default=None, description="Tokenizer name/folder if not the model's")
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: int | None = Field(default=None, gt=0, description="Context length; default the model's")
    dtype: str = "auto"
    enable_prefix_caching: bool = True
    seed: int = 0
    trust_remote_code: bool = False
    enforce_eager: bool = False
    name: str | None = None
    # Anything else vllm.LLM accepts (e.g. {"quantization": "awq"}), passed through unchecked.
    engine_args: dict[str, Any] = Field(default_factory=dict)


@register_backend("vllm")
class VLLMGenerator(ChatTemplateMixin, Generator):
    """vllm.LLM in this process; `context_length` is the engine's max_model_len."""

    Options = VLLMOptions

    def __init__(self, options: VLLMOptions) -> None:
        self.options = options
        try:
            import vllm
        except ImportError as error:
            raise MedalignError(f"the vllm backend needs vLLM and a GPU: pip install vllm ({error})") from None
        self._vllm = vllm
        engine_args: dict[str, Any] = {
            "model": options.model,
            "enable_prefix_caching": options.enable_prefix_caching,
            "tensor_parallel_size": options.tensor_parallel_size,
            "gpu_memory_utilization": options.gpu_memory_utilization,
            "dtype": options.dtype,
            "seed": options.seed,
            "trust_remote_code": options.trust_remote_code,
            "enforce_eager": options.enforce_eager,
        }
        if options.tokenizer is not None:
            engine_args["tokenizer"] = options.tokenizer
        if options.max_model_len is not None:
            engine_args["max_model_len"] = options.max_model_len
        engine_args.update(options.engine_args)
        try:
            self._llm = vllm.LLM(**engine_args)
        except (OSError, ValueError, RuntimeError) as error:
            raise MedalignError(f"vLLM could not load model {options.model!r}: {error}") from None
        self._hf_tokenizer = self._llm.get_tokenizer()
        self.name = options.name or options.model
        self.tokenizer = HuggingFaceCounter(self._hf_tokenizer, name=self.name)
        self.context_length = self._engine_context_length()

    def _engine_context_length(self) -> int:
        # The engine settles max_model_len (from the option or the model's config); where it keeps it has moved
        # between vLLM versions.
        for owner in (getattr(self._llm, "llm_engine", None), self._llm):
            model_config = getattr(owner, "model_config", None)
            value = getattr(model_config, "max_model_len", None)
            if isinstance(value, int) and value > 0:
                return value
        if self.options.max_model_len is not None:
            return self.options.max_model_len
        raise MedalignError(f"vLLM did not report model {self.options.model!r}'s context length; set max_model_len")

    def generate(
        self, prompts: list[str], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> list[GenerationResult]:
        """One batched `LLM.chat` call; vLLM schedules the batch itself. Latency is the whole batch's."""
        check_generation_arguments(prompts, max_tokens, temperature)
        if self._llm is None:
            raise MedalignError(f"generator {self.name!r} is closed")
        if not prompts:
            return []
        for index, prompt in enumerate(prompts):
            length = self.count_prompt_tokens(prompt)
            if length >= self.context_length:
                raise MedalignError(
                    f"prompt {index} has {length} tokens with its chat template; model {self.name!r} reads at most "
                    f"{self.context_length}: shrink the context budget"
                )
        sampling = self._vllm.SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=self.options.seed)
        conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
        started = time.perf_counter()
        outputs = self._llm.chat(conversations, sampling, use_tqdm=False)
        latency = time.perf_counter() - started
        results = []
        for output in outputs:
            completion = output.outputs[0]
            results.append(
                GenerationResult(
                    text=completion.text.strip(),
                    prompt_tokens=len(output.prompt_token_ids or []),
                    completion_tokens=len(completion.token_ids),
                    latency_s=latency,
                )
            )
        return results

    def close(self) -> None:
        # vLLM frees GPU memory when the engine is garbage-collected; drop our reference.
        self._llm = None
