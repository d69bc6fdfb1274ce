"""`serve`'s JSON API through FastAPI's TestClient over a real pipeline (real FAISS indexes, real embedding model)
on a synthetic cohort; generator failures and streaming against real HTTP servers on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medalign_rag.errors import MedalignError  # noqa: E402
from medalign_rag.index.builder import IndexSettings  # noqa: E402
from medalign_rag.pipeline import AnswerRequest, Pipeline  # noqa: E402
from medalign_rag.records.dataset import open_data_folder  # noqa: E402
from medalign_rag.serve import ServeSettings, check_bind, create_app  # noqa: E402
from medalign_rag.serve.server import TOKEN_ENV, resolve_token  # noqa: E402
from tests.serve_support import ENV, make_cohort  # noqa: E402

SMALL = "9900000000002"  # 2 encounters, 60 events: its index builds in seconds
QUESTION = "What was the most recent hemoglobin A1c?"
TOKEN = "a-test-token-of-enough-length"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("serve-cohort"))


@pytest.fixture(scope="module")
def pipeline(cohort, tmp_path_factory) -> Pipeline:
    folder = open_data_folder(cohort)
    return Pipeline(folder, IndexSettings(index_dir=tmp_path_factory.mktemp("serve-indexes")))


@pytest.fixture(scope="module")
def client(pipeline) -> TestClient:
    return TestClient(create_app(pipeline, pipeline.source))


def ask_body(**changes) -> dict:
    return {"patient_id": SMALL, "question": QUESTION, "strategy": "temporal", "budget": 2048, **changes}


# -- reading --------------------------------------------------------------------------------------------


def test_health_lists_servable_strategies_and_every_answer_carries_the_safety_headers(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    health = response.json()
    assert health["backend"] == "none" and health["streaming"] is False and health["patients"] == 3
    assert "temporal" in health["strategies"] and "full" in health["strategies"]
    assert "oracle" not in health["strategies"]  # it needs gold evidence, which a server never has
    for path in ("/api/health", "/", "/static/app.js", "/api/patients/nobody/timeline"):
        headers = client.get(path).headers
        assert headers["cache-control"] == "no-store", path
        assert headers["content-security-policy"].startswith("default-src 'self'"), path
        assert "script-src 'self';" in headers["content-security-policy"], path


def test_the_api_page_and_schema_are_served_from_local_files(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/health", "/api/patients", "/api/patients/{patient_id}/timeline", "/api/patients/{patient_id}/events",
            "/api/ask", "/api/ask/stream", "/api/compare"} <= set(schema["paths"])
    docs = client.get("/docs")
    if docs.status_code == 404:  # fastapi-offline not installed: the answer says so
        assert "fastapi-offline" in docs.json()["detail"]
        return
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "http" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/docs.js").status_code == 200


def test_patients_are_paged_and_filtered_by_id(client, pipeline):
    everyone = client.get("/api/patients").json()
    assert everyone["total"] == 3
    assert [p["patient_id"] for p in everyone["items"]] == ["9900000000001", "9900000000002", "9900000000003"]
    record = pipeline.source.load_record(SMALL)
    small = everyone["items"][1]
    assert small["encounters"] == len(record.encounters) and small["events"] == record.n_events
    assert small["tokens"] > 0 and isinstance(small["indexed"], bool)

    page = client.get("/api/patients", params={"offset": 1, "limit": 1}).json()
    assert page["total"] == 3 and [p["patient_id"] for p in page["items"]] == ["9900000000002"]
    found = client.get("/api/patients", params={"q": "0003"}).json()
    assert found["total"] == 1 and found["items"][0]["patient_id"] == "9900000000003"
    assert client.get("/api/patients", params={"limit": 0}).status_code == 422


def test_timeline_lists_encounters_filters_by_date_and_pages_events(client, pipeline):
    record = pipeline.source.load_record("9900000000003")
    timeline = client.get("/api/patients/9900000000003/timeline").json()
    assert timeline["total"] == len(record.encounters)
    assert [e["encounter_id"] for e in timeline["encounters"]] == [e.encounter_id for e in record.encounters]
    assert [e["events"] for e in timeline["encounters"]] == [len(e.events) for e in record.encounters]

    middle = record.encounters[len(record.encounters) // 2].start.date()
    later = client.get("/api/patients/9900000000003/timeline", params={"from": middle.isoformat()}).json()
    assert later["total"] == sum(1 for e in record.encounters if e.start.date() >= middle) < timeline["total"]
    earlier = client.get("/api/patients/9900000000003/timeline", params={"to": middle.isoformat()}).json()
    assert all(e["start"][:10] <= middle.isoformat() for e in earlier["encounters"])

    encounter = max(record.encounters, key=lambda e: len(e.events))
    first = client.get("/api/patients/9900000000003/events",
                       params={"encounter": encounter.encounter_id, "limit": 5}).json()
    rest = client.get("/api/patients/9900000000003/events",
                      params={"encounter": encounter.encounter_id, "offset": 5, "limit": 5000}).json()
    assert first["total"] == len(encounter.events)
    assert [e["event_id"] for e in first["events"] + rest["events"]] == [e.event_id for e in encounter.events]


@pytest.mark.parametrize(
    "path, params, status, field",
    [
        ("/api/patients/nobody/timeline", {}, 404, "patient_id"),
        ("/api/patients/a..b/timeline", {}, 422, "patient_id"),
        ("/api/patients/9900000000003/timeline", {"from": "2020-02-30"}, 422, "from"),
        ("/api/patients/9900000000003/timeline", {"from": "2021-01-01", "to": "2020-01-01"}, 422, "from"),
        ("/api/patients/9900000000003/events", {"encounter": "no-such-encounter"}, 404, "encounter"),
        ("/api/patients/9900000000003/events", {}, 422, "encounter"),
    ],
)
def test_bad_reads_get_a_json_error_naming_the_field(client, path, params, status, field):
    response = client.get(path, params=params)
    assert response.status_code == status
    assert response.json()["field"] == field and response.json()["detail"]


# -- answering ------------------------------------------------------------------------------------------


def test_ask_returns_the_pipelines_answer_with_context_and_cited_events(client, pipeline):
    response = client.post("/api/ask", json=ask_body())
    assert response.status_code == 200, response.text
    answer = response.json()
    direct = pipeline.answer([AnswerRequest(patient_id=SMALL, question=QUESTION, strategy="temporal", budget=2048)],
                             generate=False)[0]
    assert answer["event_ids"] == direct.event_ids and answer["chunk_ids"] == direct.chunk_ids
    assert answer["context"] == direct.context and answer["context_tokens"] == direct.context_tokens
    assert answer["answer"] is None and answer["backend"] == "none"
    assert 0 < answer["context_tokens"] <= 2048 and answer["event_ids"]
    # Every cited event is grouped under its encounter, and the citations are exactly those encounters.
    grouped = answer["events_by_encounter"]
    assert sorted(e for events in grouped.values() for e in events) == sorted(answer["event_ids"])
    assert set(grouped) == {c["encounter_id"] for c in answer["citations"]}


def test_simultaneous_first_questions_build_the_index_once(pipeline, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    fresh = Pipeline(pipeline.source, IndexSettings(index_dir=tmp_path / "indexes"))
    builds = []
    build_patient = fresh.builder.build_patient

    def counted(*args, **kwargs):  # the real build, counted
        builds.append(args[1] if len(args) > 1 else kwargs.get("patient_id"))
        return build_patient(*args, **kwargs)

    fresh.builder.build_patient = counted
    client = TestClient(create_app(fresh, fresh.source))
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: client.post("/api/ask", json=ask_body()), range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert builds == [SMALL]
    assert len({tuple(r.json()["event_ids"]) for r in responses}) == 1


def test_ask_as_of_a_date_cites_nothing_after_it(client, pipeline):
    record = pipeline.source.load_record(SMALL)
    anchor = record.encounters[0].end or record.encounters[0].start
    answer = client.post("/api/ask", json=ask_body(time_anchor=anchor.isoformat())).json()
    stamps = {ev.event_id: ev.timestamp for _, ev in record.iter_events()}
    assert answer["event_ids"] and all(stamps[e] <= anchor for e in answer["event_ids"])


@pytest.mark.parametrize(
    "changes, status, field",
    [
        ({"patient_id": "../../etc/passwd"}, 422, "patient_id"),
        ({"patient_id": "nobody"}, 404, "patient_id"),
        ({"strategy": "magic"}, 422, "strategy"),
        ({"strategy": "oracle"}, 422, "strategy"),
        ({"budget": 0}, 422, "budget"),
        ({"budget": "lots"}, 422, "budget"),
        ({"time_anchor": "2020-13-01"}, 422, "time_anchor"),
        ({"question": ""}, 422, "question"),
        ({"question": "x" * 2001}, 422, "question"),
        ({"surprise": 1}, 422, "surprise"),
    ],
)
def test_bad_asks_get_a_json_error_naming_the_field(client, changes, status, field):
    response = client.post("/api/ask", json=ask_body(**changes))
    assert response.status_code == status, response.text
    assert response.json()["field"] == field


def test_a_body_over_the_cap_is_refused_before_parsing(pipeline):
    small_cap = TestClient(create_app(pipeline, pipeline.source,
                                      settings=ServeSettings(max_body_bytes=1024, max_question_chars=10_000)))
    response = small_cap.post("/api/ask", json=ask_body(question="x" * 2000))
    assert response.status_code == 413 and "1024 bytes" in response.json()["detail"]
    assert small_cap.post("/api/ask", json=ask_body()).status_code == 200
    assert small_cap.post("/api/ask", content=b"{not json", headers={"content-type": "application/json"}
                          ).status_code == 422


def test_compare_puts_each_strategy_beside_the_others(client):
    response = client.post("/api/compare", json={"patient_id": SMALL, "question": QUESTION,
                                                 "strategies": ["full", "temporal"], "budget": 2048})
    assert response.status_code == 200, response.text
    full, temporal = response.json()["results"]
    assert (full["strategy"], temporal["strategy"]) == ("full", "temporal")
    alone = client.post("/api/ask", json=ask_body(strategy="full")).json()
    assert full["event_ids"] == alone["event_ids"] and full["context"] == alone["context"]
    assert full["event_ids"] != temporal["event_ids"]
    for strategies in (["temporal"], ["temporal", "temporal"], ["temporal", "oracle"], ["a", "b", "c", "d", "e"]):
        bad = client.post("/api/compare", json={"patient_id": SMALL, "question": QUESTION, "strategies": strategies})
        assert bad.status_code == 422 and bad.json()["field"] == "strategies", strategies


def parse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_stream_without_a_model_sends_the_context_then_the_answer(client):
    response = client.post("/api/ask/stream", json=ask_body())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    assert [name for name, _ in events] == ["context", "answer"]
    alone = client.post("/api/ask", json=ask_body()).json()
    assert events[1][1]["event_ids"] == alone["event_ids"] and events[0][1]["context"] == alone["context"]
    assert client.post("/api/ask/stream", json=ask_body(patient_id="nobody")).status_code == 404


# -- the token rule -------------------------------------------------------------------------------------


def test_with_a_token_every_api_request_needs_it(pipeline):
    guarded = TestClient(create_app(pipeline, pipeline.source, token=TOKEN))
    assert guarded.get("/api/health").status_code == 401
    assert guarded.get("/api/health").headers["www-authenticate"] == "Bearer"
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}"):
        assert guarded.get("/api/patients", headers={"Authorization": wrong}).status_code == 401, wrong
    assert guarded.post("/api/ask", json=ask_body()).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.get("/api/patients", headers=good).status_code == 200
    assert guarded.post("/api/ask", json=ask_body(), headers=good).status_code == 200
    # The page itself holds no record; it asks for the token when the API says 401.
    assert guarded.get("/").status_code == 200


def test_a_non_loopback_host_needs_a_token(monkeypatch):
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        with pytest.raises(MedalignError, match="without a token"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert resolve_token(None) == TOKEN
    with pytest.raises(MedalignError, match="at least 16 characters"):
        resolve_token("short")


def test_the_cli_refuses_to_listen_beyond_loopback_without_a_token(cohort):
    env = {k: v for k, v in ENV.items() if k != TOKEN_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "medalign_rag.cli", "serve", "--data", str(cohort), "--host", "0.0.0.0",
         "--backend", "none"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert "without a token" in result.stderr and "Traceback" not in result.stderr


# -- a failing answering model: 502 / 504, and the server stays healthy ----------------------------------


class FlakyModelServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose model is listed but whose completions fail (mode 'fail') or hang ('slow')."""

    mode = "fail"

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, {"data": [{"id": "flaky", "max_model_len": 4096}]})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "slow":
            time.sleep(3)
            self._send(200, {"choices": [{"message": {"content": "late"}}]})
        else:
            self._send(500, {"error": {"message": "the model crashed"}})

    def _send(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (the timeout case)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky_model() -> Iterator[type[FlakyModelServer]]:
    handler = type("Handler", (FlakyModelServer,), {"mode": "fail"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode, status", [("fail", 502), ("slow", 504)])
def test_a_failing_model_gives_502_or_504_and_the_server_stays_healthy(pipeline, flaky_model, mode, status):
    from medalign_rag.generation import create_generator

    flaky_model.mode = mode
    generator = create_generator("openai", base_url=flaky_model.base_url, max_retries=0, read_timeout=0.5)
    answering = Pipeline(pipeline.source, IndexSettings(index_dir=pipeline.index_dir), generator=generator)
    client = TestClient(create_app(answering, pipeline.source))
    for path in ("/api/ask", "/api/ask/stream", "/api/compare"):
        body = ask_body() if path != "/api/compare" else {**ask_body(strategy=None), "strategies": ["full", "bm25"]}
        body = {k: v for k, v in body.items() if v is not None}
        response = client.post(path, json=body)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"] == "application/json" and response.json()["detail"]
    assert client.get("/api/health").status_code == 200
    assert client.post("/api/ask", json=ask_body(generate=False)).status_code == 200
