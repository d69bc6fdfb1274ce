"""Backends' `stream()`: pieces as the model writes them, joining to what `generate()` answers (greedy), with
token counts; against llama-cpp-python's real OpenAI server and the real local SmolLM2; and end to end through
`serve`'s /api/ask/stream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.generation import GenerationFailed, create_generator
from tests.serve_support import free_port, make_cohort
from tests.test_openai_server import llama_server  # noqa: F401  (the one llama.cpp server fixture)

PROMPT = "Name three primary colors, separated by commas."


@pytest.mark.slow
def test_openai_stream_yields_pieces_that_join_to_the_generated_answer(llama_server):  # noqa: F811
    generator = create_generator("openai", base_url=llama_server, seed=0, context_length=2048)
    try:
        stream = generator.stream(PROMPT, max_tokens=24)
        pieces = list(stream)
        whole = generator.generate([PROMPT], max_tokens=24)[0]
    finally:
        generator.close()
    assert len(pieces) > 1, pieces  # really streamed, not one final blob
    assert "".join(pieces).strip() == whole.text
    assert stream.result is not None and stream.result.text == whole.text
    assert 0 < stream.result.completion_tokens <= 24 and stream.result.prompt_tokens > 0


class ModelsOnly(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        payload = json.dumps({"data": [{"id": "gone", "max_model_len": 2048}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def test_a_stream_from_a_server_that_went_away_fails_clearly_on_the_first_piece():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ModelsOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    generator = create_generator("openai", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                                 max_retries=1, backoff_s=0.01)
    server.shutdown()
    server.server_close()
    stream = generator.stream(PROMPT, max_tokens=8)  # lazy: nothing is sent until the first piece is asked for
    with pytest.raises(GenerationFailed, match="cannot reach .* after 2 attempt"):
        next(stream)
    generator.close()


class ScriptedStreamServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that streams a fixed answer the way vLLM does: one SSE event per piece, written
    and flushed separately, a keep-alive comment, a last chunk with usage, then [DONE]. It stands in for the model
    only; what is under test is our HTTP and SSE handling. (The real-model tests above run where llama-cpp-python
    works.)"""

    pieces = ["Red", ",", " blue", " and", " yellow", "."]

    def do_GET(self) -> None:  # noqa: N802
        self._json({"data": [{"id": "scripted", "max_model_len": 4096}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not body.get("stream"):
            self._json({"choices": [{"message": {"content": "".join(self.pieces)}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": len(self.pieces)}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(text: str) -> None:
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        send(": keep-alive\n\n")
        send('data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n')
        for piece in self.pieces:
            send(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n")
        send('data: {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 6}}\n\n')
        send("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _json(self, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedStreamServer)
    server.protocol_version = "HTTP/1.1"
    ScriptedStreamServer.protocol_version = "HTTP/1.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_openai_stream_parses_server_sent_events_piece_by_piece(scripted_server):
    with create_generator("openai", base_url=scripted_server) as generator:
        stream = generator.stream(PROMPT, max_tokens=16)
        pieces = list(stream)
        whole = generator.generate([PROMPT], max_tokens=16)[0]
    assert pieces == ScriptedStreamServer.pieces
    assert stream.result.text == whole.text == "Red, blue and yellow."
    assert (stream.result.prompt_tokens, stream.result.completion_tokens) == (11, 6)


def test_serve_streams_an_openai_backend_token_by_token(scripted_server, tmp_path):
    from fastapi.testclient import TestClient

    from medalign_rag.index.builder import IndexSettings
    from medalign_rag.pipeline import Pipeline
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.serve import create_app

    folder = open_data_folder(make_cohort(tmp_path / "cohort"))
    with create_generator("openai", base_url=scripted_server) as generator:
        pipeline = Pipeline(folder, IndexSettings(index_dir=tmp_path / "indexes"), generator=generator)
        client = TestClient(create_app(pipeline, folder))
        assert client.get("/api/health").json()["streaming"] is True
        response = client.post("/api/ask/stream", json={"patient_id": "9900000000002", "question": "A1c?",
                                                         "strategy": "bm25", "budget": 2048})
    assert response.status_code == 200, response.text
    events = parse_events(response.text)
    assert [name for name, _ in events] == ["context"] + ["token"] * 6 + ["answer"]
    assert [data["text"] for name, data in events if name == "token"] == ScriptedStreamServer.pieces
    answer = events[-1][1]
    assert answer["answer"] == "Red, blue and yellow." and answer["backend"] == "scripted"
    assert answer["completion_tokens"] == 6 and answer["event_ids"] == events[0][1]["event_ids"]


def parse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.mark.slow
def test_serve_streams_tokens_from_a_real_model_then_the_answer(llama_server, tmp_path):  # noqa: F811
    from fastapi.testclient import TestClient

    from medalign_rag.index.builder import IndexSettings
    from medalign_rag.pipeline import Pipeline
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.serve import create_app

    folder = open_data_folder(make_cohort(tmp_path / "cohort"))
    generator = create_generator("openai", base_url=llama_server, seed=0, tokenizer="local", context_length=2048)
    try:
        pipeline = Pipeline(folder, IndexSettings(index_dir=tmp_path / "indexes"), generator=generator,
                            max_new_tokens=24)
        client = TestClient(create_app(pipeline, folder))
        body = {"patient_id": "9900000000002", "question": "What was the most recent hemoglobin A1c?",
                "strategy": "bm25", "budget": 1024}
        response = client.post("/api/ask/stream", json=body)
    finally:
        generator.close()
    assert response.status_code == 200, response.text
    events = parse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "context" and names[-1] == "answer" and names.count("token") > 1, names
    answer = events[-1][1]
    assert "".join(data["text"] for name, data in events if name == "token").strip() == answer["answer"]
    assert answer["backend"] == "smollm2" and answer["completion_tokens"] > 0 and answer["citations"]
    assert events[0][1]["event_ids"] == answer["event_ids"]


@pytest.mark.slow
def test_local_stream_matches_generate_token_for_token():
    generator = create_generator("local")
    try:
        stream = generator.stream(PROMPT, max_tokens=12)
        pieces = list(stream)
        whole = generator.generate([PROMPT], max_tokens=12)[0]
        early = generator.stream(PROMPT, max_tokens=12)
        next(early)
        early.close()  # stops the decoding thread instead of leaving it running
    finally:
        generator.close()
    assert len(pieces) > 1
    assert stream.result is not None
    assert stream.result.text == whole.text
    assert (stream.result.prompt_tokens, stream.result.completion_tokens) == (whole.prompt_tokens,
                                                                            whole.completion_tokens)
    assert early.result is None
    with pytest.raises(MedalignError, match="closed"):
        generator.stream(PROMPT)
