"""The OpenAI-compatible HTTP backend against real servers on loopback.

- llama-cpp-python's server running SmolLM2 (skipped when llama_cpp or its [server] extra is missing);
- a tiny stdlib http.server that answers 503/429 before succeeding, to see the retries;
- a port with nothing listening, to see a clear error instead of a hang.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.generation import create_generator

MODEL_ALIAS = "smollm2"
SERVER_CONTEXT = 2048
READY_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory) -> Iterator[str]:
    """Base URL (…/v1) of llama-cpp-python's OpenAI server running SmolLM2 on a free loopback port."""
    try:
        import llama_cpp
        import llama_cpp.server.app  # noqa: F401  (pulls the [server] extra: fastapi, uvicorn, sse-starlette, ...)
    except ImportError as error:
        pytest.skip(f"llama-cpp-python with its [server] extra is not installed ({error})")
    from medalign_rag.generation.local import find_smollm2_gguf

    try:
        gguf = find_smollm2_gguf()
    except MedalignError as error:
        pytest.skip(str(error))
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf), "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(SERVER_CONTEXT), "--n_threads", "1",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after {READY_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def server_generator(llama_server):
    generator = create_generator(
        "openai", base_url=llama_server, model=MODEL_ALIAS, context_length=SERVER_CONTEXT, tokenizer="local",
        concurrency=2,
    )  # fmt: skip
    yield generator
    generator.close()


# --- llama-cpp-python server ------------------------------------------------------------------------


@pytest.mark.slow
def test_server_answer_is_non_empty(server_generator):
    [result] = server_generator.generate(["What is a normal adult resting heart rate?"], max_tokens=32)
    assert result.text
    assert 0 < result.completion_tokens <= 32
    assert result.prompt_tokens > 0 and result.latency_s > 0
    assert server_generator.name == MODEL_ALIAS and server_generator.context_length == SERVER_CONTEXT


@pytest.mark.slow
def test_batch_with_concurrency_keeps_order_and_counts_tokens(server_generator):
    prompts = ["Say yes.", "Name two vitamins. " * 3, "Define anemia in one short sentence, please. " * 6]
    results = server_generator.generate(prompts, max_tokens=5)
    assert len(results) == 3 and all(r.text for r in results)
    # The server counts the chat-templated prompt; our SmolLM2 tokenizer counts the bare prompt. The difference
    # is the chat template's fixed overhead, the same for every prompt when both tokenize alike.
    overheads = [r.prompt_tokens - server_generator.tokenizer.count(p) for r, p in zip(results, prompts)]
    assert overheads[0] > 0
    assert max(overheads) - min(overheads) <= 1, overheads
    assert all(r.completion_tokens <= 5 for r in results)


@pytest.mark.slow
def test_model_is_discovered_when_the_server_serves_one(llama_server):
    with create_generator("openai", base_url=llama_server, context_length=SERVER_CONTEXT) as generator:
        assert generator.model == MODEL_ALIAS
        assert generator.tokenizer.name == "cl100k_base"  # default token counter when none is configured


@pytest.mark.slow
def test_wrong_model_name_is_a_clear_error(llama_server):
    with pytest.raises(MedalignError) as caught:
        create_generator("openai", base_url=llama_server, model="gpt-5-medical", context_length=SERVER_CONTEXT)
    assert "gpt-5-medical" in str(caught.value) and MODEL_ALIAS in str(caught.value)


@pytest.mark.slow
def test_unknown_context_length_must_be_configured(llama_server):
    # llama-cpp-python's /v1/models does not report the context window.
    with pytest.raises(MedalignError, match="context_length"):
        create_generator("openai", base_url=llama_server, model=MODEL_ALIAS)


@pytest.mark.slow
def test_prompt_longer_than_the_server_context_is_a_clear_error(server_generator):
    with pytest.raises(MedalignError) as caught:
        server_generator.generate(["blood pressure " * 1500], max_tokens=4)
    message = str(caught.value)
    assert "does not fit" in message and "maximum context length" in message
    assert "rejected model" not in message


@pytest.mark.slow
def test_base_url_without_api_prefix_is_a_clear_error(llama_server):
    root = llama_server.removesuffix("/v1")
    generator = create_generator("openai", base_url=root, model=MODEL_ALIAS, context_length=SERVER_CONTEXT)
    with generator, pytest.raises(MedalignError, match="/v1"):
        generator.generate(["hello"], max_tokens=4)


# --- no server at all -------------------------------------------------------------------------------


def test_server_down_fails_fast_with_a_clear_error():
    base_url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(MedalignError) as caught:
        create_generator("openai", base_url=base_url, model="m", context_length=512, max_retries=2, backoff_s=0.01)
    message = str(caught.value)
    assert base_url in message and "is it running" in message and "3 attempt" in message


def test_base_url_must_be_http():
    with pytest.raises(MedalignError, match="http://"):
        create_generator("openai", base_url="127.0.0.1:8000/v1", model="m", context_length=512)


# --- retries against a flaky stdlib server ----------------------------------------------------------


class _FlakyServer(ThreadingHTTPServer):
    """Answers chat completions with the queued failure statuses first, then a valid completion."""

    daemon_threads = True

    def __init__(
        self,
        failures: list[int] | None = None,
        retry_after: str | None = None,
        models: list[dict] | None = None,
        error_message: str = "busy",
        has_models_endpoint: bool = True,
    ):
        super().__init__(("127.0.0.1", 0), _FlakyHandler)
        self.failures = list(failures or [])
        self.retry_after = retry_after
        self.error_message = error_message
        self.has_models_endpoint = has_models_endpoint
        self.models = models if models is not None else [{"id": "flaky", "object": "model", "max_model_len": 4096}]
        self.completion_requests: list[dict] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _FlakyHandler(BaseHTTPRequestHandler):
    server: _FlakyServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models" and self.server.has_models_endpoint:
            self._send(200, {"object": "list", "data": self.server.models})
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.completion_requests.append(request)
            status = self.server.failures.pop(0) if self.server.failures else 200
        if status != 200:
            headers = {"Retry-After": self.server.retry_after} if self.server.retry_after else {}
            self._send(
                status,
                {"error": {"message": f"{self.server.error_message} ({status})", "type": "server_error"}},
                headers,
            )
            return
        prompt = request["messages"][-1]["content"]
        self._send(
            200,
            {
                "object": "chat.completion",
                "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f" echo: {prompt} "}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
            },
        )


@pytest.fixture
def flaky_server(request) -> Iterator[_FlakyServer]:
    server = _FlakyServer(**getattr(request, "param", {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("flaky_server", [{"failures": [503, 502]}], indirect=True)
def test_5xx_is_retried_then_succeeds(flaky_server):
    with create_generator("openai", base_url=flaky_server.base_url, backoff_s=0.01, max_retries=3) as generator:
        assert generator.model == "flaky" and generator.context_length == 4096  # from max_model_len
        [result] = generator.generate(["hi"], max_tokens=7, temperature=0.0)
    assert result.text == "echo: hi"
    assert (result.prompt_tokens, result.completion_tokens) == (11, 3)
    assert len(flaky_server.completion_requests) == 3
    sent = flaky_server.completion_requests[-1]
    assert sent["model"] == "flaky" and sent["max_tokens"] == 7 and sent["temperature"] == 0.0
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("flaky_server", [{"failures": [429], "retry_after": "0"}], indirect=True)
def test_429_is_retried(flaky_server):
    with create_generator("openai", base_url=flaky_server.base_url, backoff_s=0.01) as generator:
        assert generator.generate(["x"])[0].text == "echo: x"
    assert len(flaky_server.completion_requests) == 2


@pytest.mark.parametrize("flaky_server", [{"failures": [503] * 10}], indirect=True)
def test_retries_are_bounded(flaky_server):
    generator = create_generator("openai", base_url=flaky_server.base_url, backoff_s=0.01, max_retries=2)
    with generator, pytest.raises(MedalignError) as caught:
        generator.generate(["x"])
    assert "503" in str(caught.value) and "busy" in str(caught.value)
    assert len(flaky_server.completion_requests) == 3


@pytest.mark.parametrize("flaky_server", [{"failures": [400]}], indirect=True)
def test_client_errors_are_not_retried(flaky_server):
    generator = create_generator("openai", base_url=flaky_server.base_url, backoff_s=0.01)
    with generator, pytest.raises(MedalignError, match="HTTP 400"):
        generator.generate(["x"])
    assert len(flaky_server.completion_requests) == 1


@pytest.mark.parametrize("flaky_server", [{"failures": [503, 503, 503]}], indirect=True)
def test_concurrent_batch_survives_transient_failures(flaky_server):
    prompts = [f"p{i}" for i in range(8)]
    with create_generator("openai", base_url=flaky_server.base_url, backoff_s=0.01, concurrency=4) as generator:
        results = generator.generate(prompts)
    assert [r.text for r in results] == [f"echo: {p}" for p in prompts]
    assert len(flaky_server.completion_requests) == 8 + 3


@pytest.mark.parametrize("flaky_server", [{"models": [{"id": "a"}, {"id": "b"}]}], indirect=True)
def test_several_models_need_a_choice_and_no_reported_context_needs_config(flaky_server):
    with pytest.raises(MedalignError, match="a, b"):
        create_generator("openai", base_url=flaky_server.base_url)
    with pytest.raises(MedalignError, match="context_length"):
        create_generator("openai", base_url=flaky_server.base_url, model="b")
    with create_generator("openai", base_url=flaky_server.base_url, model="b", context_length=1024) as generator:
        assert generator.context_length == 1024


def test_api_key_is_read_from_the_named_environment_variable(flaky_server, monkeypatch):
    seen: list[str | None] = []
    original = _FlakyHandler.do_GET

    def recording_get(handler: _FlakyHandler) -> None:
        seen.append(handler.headers.get("Authorization"))
        original(handler)

    monkeypatch.setattr(_FlakyHandler, "do_GET", recording_get)
    monkeypatch.setenv("MEDALIGN_TEST_KEY", "sk-test-123")
    with create_generator("openai", base_url=flaky_server.base_url, api_key_env="MEDALIGN_TEST_KEY"):
        pass
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with create_generator("openai", base_url=flaky_server.base_url):
        pass
    assert seen == ["Bearer sk-test-123", None]


@pytest.mark.parametrize(
    "flaky_server",
    [{"failures": [404], "error_message": "The model `m2` does not exist.", "has_models_endpoint": False}],
    indirect=True,
)
def test_wrong_model_reported_by_the_completion_endpoint(flaky_server):
    # Without /models the name cannot be checked up front; the server's 404 body must still be explained.
    generator = create_generator("openai", base_url=flaky_server.base_url, model="m2", context_length=512)
    with generator, pytest.raises(MedalignError, match="rejected model 'm2'.*does not exist"):
        generator.generate(["x"])
    assert len(flaky_server.completion_requests) == 1


@pytest.mark.parametrize("flaky_server", [{"has_models_endpoint": False}], indirect=True)
def test_without_models_endpoint_the_model_must_be_named(flaky_server):
    with pytest.raises(MedalignError, match="model option"):
        create_generator("openai", base_url=flaky_server.base_url, context_length=512)
