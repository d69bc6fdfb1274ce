"""Any OpenAI-compatible chat-completions server over HTTP: `vllm serve`, llama.cpp's server, llama-cpp-python...

Requests run in a bounded thread pool sharing one httpx client. Overload and transient failures (429, 5xx,
refused or dropped connections) are retried a bounded number of times with exponential back-off (honouring
Retry-After); everything else becomes a MedalignError that says what is wrong (server down, wrong URL,
wrong model). The connect timeout is short, so a server that is not there fails fast instead of hanging.

Prompts carry patient records, so where they go is checked before anything is sent: an API key is sent only when
the options name the environment variable that holds it (`api_key_env`), plain http is refused for any host but
this machine unless `allow_insecure_http: true`, and the first time records are about to leave this machine for a
host, one warning line says so on stderr.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx
import tenacity
from pydantic import AliasChoices, Field

from medalign_rag.errors import MedalignError
from medalign_rag.generation.base import (
    BackendOptions,
    GenerationFailed,
    GenerationResult,
    GenerationStream,
    GenerationTimeout,
    Generator,
    check_generation_arguments,
    register_backend,
)
from medalign_rag.tokenization import HuggingFaceCounter, TokenCounter, default_counter

_RETRY_STATUSES = {429, 500, 502, 503, 504}
# Connection-level failures worth another try: the server may be restarting or momentarily overloaded.
_RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# How servers word "that model is not here" (OpenAI, vLLM: "The model `x` does not exist"; others: "model not found").
_UNKNOWN_MODEL = re.compile(
    r"model\b.{0,80}\b(does not exist|not found|not served|not available|unknown)|\b(unknown|invalid|no such) model",
    re.IGNORECASE,
)
_CONTEXT_EXCEEDED = re.compile(r"context[ _](length|window)|too many tokens|exceed", re.IGNORECASE)
# Keys servers use in /v1/models entries for the context window (vLLM; llama.cpp's server; LM Studio & co).
_CONTEXT_KEYS = ("max_model_len", "context_length", "max_context_length", "n_ctx")


class OpenAIOptions(BackendOptions):
    base_url: str = Field(description="Server root including the API prefix, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(default=None, description="Model id to request; default: the server's only model")
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the API key; no key is sent unless this names one",
    )
    allow_insecure_http: bool = Field(
        default=False, description="Allow plain http:// to a host other than this machine (records travel unencrypted)"
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        validation_alias=AliasChoices("concurrency", "max_concurrency"),
        description="Requests in flight at once (also accepted as max_concurrency)",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to open a connection")
    read_timeout: float = Field(default=600.0, gt=0, description="Seconds to wait for an answer")
    max_retries: int = Field(default=3, ge=0, le=10, description="Extra attempts on 429/5xx/connection errors")
    backoff_s: float = Field(default=0.5, ge=0, description="First back-off; doubles on each retry")
    backoff_max_s: float = Field(default=8.0, ge=0, description="Longest single wait, Retry-After included")
    tokenizer: str | None = Field(
        default=None,
        description="Token counter: a local HF tokenizer folder, 'local' (SmolLM2's own), or default cl100k_base",
    )
    context_length: int | None = Field(
        default=None, gt=0, description="Model context window; default: what /models reports, if it does"
    )
    seed: int | None = Field(default=None, description="Sent as `seed` where the server honours it")
    name: str | None = None


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_warned_hosts: set[str] = set()
_warned_lock = threading.Lock()


def is_loopback_host(host: str) -> bool:
    """True for this machine: a loopback address (127.0.0.0/8, ::1) or the name localhost. Other names are not
    resolved (that would itself be a request), so they count as other machines."""
    host = host.strip("[]").lower().rstrip(".")
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_destination(base_url: str, allow_insecure_http: bool) -> httpx.URL:
    """Refuse URLs that would send records where they should not go; warn once per host that is not this
    machine. Returns the parsed URL."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise MedalignError(f"base_url {base_url!r} is not a URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise MedalignError(f"base_url must start with http:// or https:// and name a host, got {base_url!r}")
    if is_loopback_host(url.host):
        return url
    if url.scheme == "http" and not allow_insecure_http:
        raise MedalignError(
            f"base_url {base_url!r} would send patient records unencrypted (plain http) to {url.host}, another "
            "machine; use https://, or set allow_insecure_http: true in backend_options if the network is trusted"
        )
    with _warned_lock:
        first_time = url.host not in _warned_hosts
        _warned_hosts.add(url.host)
    if first_time:
        sys.stderr.write(f"warning: prompts with patient records will be sent to {url.host} ({url.scheme}), "
                         "not this machine\n")
        sys.stderr.flush()
    return url


def _api_key_headers(api_key_env: str | None) -> dict[str, str]:
    """The Authorization header when the options name the key's environment variable; nothing otherwise, so a key
    meant for one service (e.g. $OPENAI_API_KEY) never goes to whatever base_url points at."""
    if not api_key_env:
        return {}
    api_key = os.environ.get(api_key_env, "").strip()
    if not api_key:
        raise MedalignError(f"api_key_env names ${api_key_env}, but that environment variable is not set")
    return {"Authorization": f"Bearer {api_key}"}


def _error_detail(response: httpx.Response) -> str:
    """The server's own words from an error body (OpenAI's {"error": {"message"}} or FastAPI's {"detail"})."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
        if body.get("detail"):
            return str(body["detail"])[:300]
        if body.get("message"):
            return str(body["message"])[:300]
    return str(body)[:300]


def _make_tokenizer(spec: str | None) -> TokenCounter:
    if spec is None or spec == "cl100k_base":
        return default_counter()
    if spec == "local":
        from medalign_rag.generation.local import load_smollm2_tokenizer

        return load_smollm2_tokenizer()
    path = Path(spec).expanduser()
    try:
        return HuggingFaceCounter.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise MedalignError(
            f"cannot load tokenizer {spec!r} offline ({error}); give a local tokenizer folder, 'local' or nothing"
        ) from None


@register_backend("openai")
class OpenAIGenerator(Generator):
    """Chat completions against an OpenAI-compatible server (greedy when temperature is 0)."""

    Options = OpenAIOptions

    def __init__(self, options: OpenAIOptions) -> None:
        self.options = options
        self.base_url = options.base_url.rstrip("/")
        check_destination(self.base_url, options.allow_insecure_http)
        headers = {"Content-Type": "application/json", **_api_key_headers(options.api_key_env)}
        timeout = httpx.Timeout(
            connect=options.connect_timeout, read=options.read_timeout, write=options.connect_timeout, pool=None
        )
        limits = httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency)
        self._client = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        try:
            self.model, reported_context = self._discover_model()
            self.context_length = options.context_length or reported_context or 0
            if not self.context_length:
                raise MedalignError(
                    f"the server at {self.base_url} does not report model {self.model!r}'s context length; "
                    "set the openai backend's context_length option"
                )
            self.name = options.name or self.model
            self.tokenizer = _make_tokenizer(options.tokenizer)
        except BaseException:
            self._client.close()
            raise

    # -- HTTP ---------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> httpx.Response:
        """One call with bounded retries; returns the final response (any status) or raises MedalignError."""
        url = f"{self.base_url}/{path}"
        return self._send_with_retries(url, lambda: self._client.request(method, url, json=payload), MedalignError)

    def _send_with_retries(self, url: str, send, failure: type[MedalignError]) -> httpx.Response:
        """`send()` until it answers with a non-retryable status, or the attempts run out (then the last response
        is returned, whatever its status). Connection errors are retried; a read timeout is not: a server still
        computing would only be asked again, multiplying the wait."""
        attempts = self.options.max_retries + 1
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts),
            retry=tenacity.retry_if_exception_type(_RETRY_ERRORS)
            | tenacity.retry_if_result(lambda response: response.status_code in _RETRY_STATUSES),
            wait=self._retry_wait,
            # A retried response is dropped unread; a streamed one holds its connection until closed.
            before_sleep=lambda state: None if state.outcome.failed else state.outcome.result().close(),
            retry_error_callback=lambda state: state.outcome.result(),
            sleep=time.sleep,
        )
        try:
            return retrying(send)
        except httpx.ReadTimeout:
            raise GenerationTimeout(
                f"no answer from {url} within read_timeout={self.options.read_timeout:g}s"
            ) from None
        except _RETRY_ERRORS as error:
            raise self._unreachable(attempts, error) from None
        except httpx.HTTPError as error:
            raise failure(f"request to {url} failed: {type(error).__name__}: {error}") from None

    def _unreachable(self, attempts: int, error: Exception) -> GenerationFailed:
        return GenerationFailed(
            f"cannot reach the OpenAI-compatible server at {self.base_url} after {attempts} attempt(s) "
            f"({type(error).__name__}: {error or 'no detail'}); is it running, and is base_url right?"
        )

    def _retry_wait(self, state: tenacity.RetryCallState) -> float:
        """Doubling back-off from `backoff_s`, stretched to the server's Retry-After (in seconds) when it sends one,
        never longer than `backoff_max_s`."""
        delay = self.options.backoff_s * (2 ** (state.attempt_number - 1))
        if not state.outcome.failed:
            retry_after = state.outcome.result().headers.get("Retry-After")
            if retry_after:
                try:
                    delay = max(delay, float(retry_after))
                except ValueError:  # an HTTP date: fall back to our own schedule
                    pass
        return min(delay, self.options.backoff_max_s)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise MedalignError(
                f"{response.request.url} answered HTTP {response.status_code} with non-JSON content; "
                "is base_url an OpenAI-compatible API (it usually ends in /v1)?"
            ) from None

    def _discover_model(self) -> tuple[str, int | None]:
        """Check the server is there and serves the model; return (model id, context length if reported)."""
        response = self._request("GET", "models")
        if response.status_code == 404:
            # Some servers have no /models; the first completion will tell whether the URL is right.
            if self.options.model is None:
                raise MedalignError(f"{self.base_url}/models is not found; give the openai backend's model option")
            return self.options.model, None
        if response.status_code >= 400:
            raise MedalignError(
                f"{self.base_url}/models answered HTTP {response.status_code}: {_error_detail(response)}"
            )
        body = self._json(response)
        entries = body.get("data") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise MedalignError(f"{self.base_url}/models did not return an OpenAI model list; is base_url right?")
        models = {str(entry.get("id")): entry for entry in entries if isinstance(entry, dict) and entry.get("id")}
        if self.options.model is None:
            if len(models) != 1:
                raise MedalignError(
                    f"the server at {self.base_url} serves {len(models)} models; choose one with the model option: "
                    f"{', '.join(sorted(models)) or '(none listed)'}"
                )
            model = next(iter(models))
        else:
            model = self.options.model
            if models and model not in models:
                raise MedalignError(
                    f"model {model!r} is not served at {self.base_url}; available: {', '.join(sorted(models))}"
                )
        return model, _reported_context_length(models.get(model, {}))

    # -- generation ---------------------------------------------------------------------------------

    def generate(
        self, prompts: list[str], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> list[GenerationResult]:
        """Send every prompt, at most `concurrency` at a time; results in the order of `prompts`."""
        check_generation_arguments(prompts, max_tokens, temperature)
        if self._client.is_closed:
            raise MedalignError(f"generator {self.name!r} is closed")
        if not prompts:
            return []
        workers = min(self.options.concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-http") as pool:
            futures = [pool.submit(self._complete, prompt, max_tokens, temperature) for prompt in prompts]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((future for future in futures if future in done and future.exception()), None)
            if failed is not None:
                for future in futures:
                    future.cancel()
                raise failed.exception()  # type: ignore[misc]
            return [future.result() for future in futures]

    def _complete(self, prompt: str, max_tokens: int, temperature: float) -> GenerationResult:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if self.options.seed is not None:
            payload["seed"] = self.options.seed
        started = time.perf_counter()
        response = self._request("POST", "chat/completions", payload)
        latency = time.perf_counter() - started
        if response.status_code >= 400:
            raise self._completion_error(response)
        body = self._json(response)
        try:
            text = body["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise MedalignError(
                f"{self.base_url}/chat/completions returned no choices[0].message.content: {str(body)[:200]}"
            ) from None
        usage = body.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        return GenerationResult(
            text=text.strip(),
            # Servers that omit usage: fall back to our own (chat template not included) count.
            prompt_tokens=int(prompt_tokens) if prompt_tokens is not None else self.tokenizer.count(prompt),
            completion_tokens=int(completion_tokens) if completion_tokens is not None else self.tokenizer.count(text),
            latency_s=latency,
        )

    # -- streaming ----------------------------------------------------------------------------------

    supports_streaming = True

    def stream(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.0) -> GenerationStream:
        """One chat completion with `stream: true`: text pieces as the server sends them (server-sent events)."""
        check_generation_arguments([prompt], max_tokens, temperature)
        if self._client.is_closed:
            raise MedalignError(f"generator {self.name!r} is closed")
        return GenerationStream(self._stream_completion(prompt, max_tokens, temperature))

    def _open_stream(self, payload: dict[str, Any]) -> httpx.Response:
        """Send a streaming request with the same bounded retries as `_request`, up to the response headers only:
        once text has started to flow a retry would repeat it."""
        url = f"{self.base_url}/chat/completions"

        def send() -> httpx.Response:
            return self._client.send(self._client.build_request("POST", url, json=payload), stream=True)

        return self._send_with_retries(url, send, GenerationFailed)

    def _stream_completion(self, prompt: str, max_tokens: int, temperature: float):
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            # Servers that know it (OpenAI, vLLM) send token usage in a last chunk; others ignore it.
            "stream_options": {"include_usage": True},
        }
        if self.options.seed is not None:
            payload["seed"] = self.options.seed
        url = f"{self.base_url}/chat/completions"
        started = time.perf_counter()
        response = self._open_stream(payload)
        pieces: list[str] = []
        usage: dict[str, Any] = {}
        try:
            if response.status_code >= 400:
                response.read()
                error = self._completion_error(response)
                raise GenerationFailed(error.message) if response.status_code >= 500 else error
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event names
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise GenerationFailed(f"{url} sent a stream line that is not JSON: {data[:200]!r}") from None
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    raise GenerationFailed(f"{url} failed while answering: {str(chunk['error'])[:300]}")
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
                    if delta:
                        pieces.append(delta)
                        yield delta
        except httpx.ReadTimeout:
            raise GenerationTimeout(
                f"{url} stopped sending for read_timeout={self.options.read_timeout:g}s"
            ) from None
        except httpx.HTTPError as error:
            raise GenerationFailed(f"the stream from {url} broke: {type(error).__name__}: {error}") from None
        finally:
            response.close()
        text = "".join(pieces)
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        return GenerationResult(
            text=text.strip(),
            prompt_tokens=int(prompt_tokens) if prompt_tokens is not None else self.tokenizer.count(prompt),
            completion_tokens=int(completion_tokens) if completion_tokens is not None else self.tokenizer.count(text),
            latency_s=time.perf_counter() - started,
        )

    def _completion_error(self, response: httpx.Response) -> MedalignError:
        detail = _error_detail(response)
        status = response.status_code
        url = f"{self.base_url}/chat/completions"
        if status in (400, 413, 422) and _CONTEXT_EXCEEDED.search(detail):
            return MedalignError(
                f"the prompt does not fit model {self.model!r}'s context (HTTP {status}): {detail}; "
                "shrink the context budget or check the context_length option"
            )
        if status in (400, 404, 422) and _UNKNOWN_MODEL.search(detail):
            return MedalignError(
                f"the server at {self.base_url} rejected model {self.model!r}: HTTP {status}: {detail}"
            )
        if status == 404:
            return MedalignError(f"{url} is not found (HTTP 404); base_url usually ends in /v1: {detail}")
        if status in (401, 403):
            where = (f"check the key in ${self.options.api_key_env}" if self.options.api_key_env
                     else "name the environment variable holding the API key in the api_key_env option")
            return MedalignError(f"{url} refused the request (HTTP {status}); {where}: {detail}")
        if status in _RETRY_STATUSES:
            return MedalignError(
                f"{url} still answered HTTP {status} after {self.options.max_retries} retries: {detail}"
            )
        return MedalignError(f"{url} answered HTTP {status}: {detail}")

    def close(self) -> None:
        self._client.close()


def _reported_context_length(entry: dict[str, Any]) -> int | None:
    for where in (entry, entry.get("meta") or {}):
        if not isinstance(where, dict):
            continue
        for key in (*_CONTEXT_KEYS, "n_ctx_train"):
            value = where.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None
