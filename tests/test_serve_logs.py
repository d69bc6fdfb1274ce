"""Record text never reaches the server log: run `medalign-rag serve` as a subprocess, use every endpoint (good and
bad requests), stop it, and search its whole output for the questions, the patient ids and lines of the record."""

from __future__ import annotations

import httpx
import pytest

from medalign_rag.records.dataset import open_data_folder
from tests.serve_support import make_cohort, running_server

SECRET_QUESTION = "Did zebrafinch-7731 ever receive warfarin"  # appears nowhere else


@pytest.mark.slow
def test_the_server_log_has_route_templates_and_statuses_but_no_record_text(tmp_path):
    cohort = make_cohort(tmp_path / "cohort")
    record = open_data_folder(cohort).load_record("9900000000002")
    log_path = tmp_path / "server.log"
    with running_server(cohort, tmp_path / "indexes", log_path) as base_url, httpx.Client(base_url=base_url,
                                                                                          timeout=300) as client:
        encounter = record.encounters[0].encounter_id
        assert client.get("/api/patients", params={"q": "9900000000002"}).status_code == 200
        assert client.get("/api/patients/9900000000002/timeline", params={"from": "2001-01-01"}).status_code == 200
        assert client.get("/api/patients/9900000000002/events", params={"encounter": encounter}).status_code == 200
        body = {"patient_id": "9900000000002", "question": SECRET_QUESTION, "strategy": "temporal", "budget": 2048,
                "time_anchor": "2023-01-02T03:04:05"}
        answered = client.post("/api/ask", json=body)
        assert answered.status_code == 200 and answered.json()["context"]
        assert client.post("/api/ask/stream", json=body).status_code == 200
        assert client.post("/api/compare", json={**{k: v for k, v in body.items() if k != "strategy"},
                                                 "strategies": ["full", "bm25"]}).status_code == 200
        # Failures quote the request back to the client; they must not quote it into the log.
        assert client.post("/api/ask", json={**body, "patient_id": "nobody-9900000000009"}).status_code == 404
        assert client.post("/api/ask", json={**body, "patient_id": "../9900000000002"}).status_code == 422
        assert client.post("/api/ask", json={**body, "strategy": f"{SECRET_QUESTION}"}).status_code == 422
        assert client.post("/api/ask", json={**body, "question": SECRET_QUESTION * 100}).status_code == 422
        assert client.post("/api/ask", content=SECRET_QUESTION.encode() * 3000).status_code == 413
        assert client.get("/api/patients/9900000000002/events", params={"encounter": "no-such"}).status_code == 404
        assert client.get(f"/nowhere/{SECRET_QUESTION}").status_code == 404

    log = log_path.read_text(encoding="utf-8", errors="replace")
    # The log does log: a line per request, with the route's template and the status.
    for line in ("GET /api/patients 200", "GET /api/patients/{patient_id}/timeline 200",
                 "GET /api/patients/{patient_id}/events 200", "POST /api/ask 200", "POST /api/ask/stream 200",
                 "POST /api/compare 200", "POST /api/ask 404", "POST /api/ask 422", "POST /api/ask 413",
                 "GET (unmatched) 404"):
        assert line in log, f"{line!r} missing from the log:\n{log}"
    # ... and nothing from the request or the record.
    assert "zebrafinch" not in log and "warfarin" not in log
    assert "990000000000" not in log and encounter not in log  # the synthetic ids 9900000000001-3
    assert "2023-01-02" not in log and "2001-01-01" not in log
    assert "<event" not in log and "Traceback" not in log
    record_lines = {text for _, event in record.iter_events() for text in (event.name, event.value, event.text)
                    if text and len(text) >= 8}
    leaked = [text for text in record_lines if text in log]
    assert leaked == []
