"""The HTTP API and the page: `create_app(pipeline, source, token=...)` returns a FastAPI app.

Endpoints (all JSON; FastAPI's OpenAPI page at /docs, served from local files):
  GET  /api/health                              backend, strategies, limits
  GET  /api/patients?q=&offset=&limit=          ids with encounters, events, tokens, indexed (paged, filtered by id)
  GET  /api/patients/{id}/timeline?from=&to=    encounters with type, dates and event counts (paged)
  GET  /api/patients/{id}/events?encounter=     one encounter's events (paged)
  POST /api/ask                                 {patient_id, question, strategy, budget, time_anchor?} -> Answer
  POST /api/ask/stream                          the same as server-sent events: context, tokens, answer
  POST /api/compare                             one question, several strategies at one budget -> [Answer]

Every answer goes through `Pipeline.answer`'s two halves: `prepare` (retrieval, packing, prompt), then
`complete` (batched generation and `finish`), or, when streaming, the generator's `stream()` then `finish`.
Split so the server can stream and can tell a model failure (502/504) from a bad request (404/422).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medalign_rag.errors import MedalignError
from medalign_rag.serve.catalog import PatientCatalog, PatientNotFound
from medalign_rag.serve.middleware import (
    AccessLogMiddleware,
    BearerTokenMiddleware,
    BodySizeLimitMiddleware,
    SecurityHeadersMiddleware,
)

LOGGER_NAME = "medalign_rag.serve"
STATIC_DIR = resources.files("medalign_rag.serve") / "static"
BUDGET_CHOICES = (2048, 4096, 8192, 16384, 32768)
MAX_BUDGET = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    #: Bearer token every /api request must carry; None on loopback without one.
    token: str | None = None
    #: Largest request body accepted (bytes); larger gets 413 before it is parsed.
    max_body_bytes: int = 64 * 1024
    #: Longest question accepted (characters); longer gets 422.
    max_question_chars: int = 2000
    #: Most strategies one compare request may ask for.
    max_compare_strategies: int = 4
    #: Parsed records kept in memory for the timeline (LRU, re-read when the source's fingerprint changes).
    record_cache_size: int = 8


class ApiError(Exception):
    """An error answer: HTTP status, a sentence for the user, and the request field it is about."""

    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"detail": self.detail}
        if self.field:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status)


class AskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(max_length=200)
    question: str = Field(min_length=1)
    strategy: str = "temporal"
    budget: int = Field(default=8192, gt=0, le=MAX_BUDGET)
    time_anchor: datetime | None = None
    #: False: retrieval and context only, even when a model is loaded.
    generate: bool = True


class CompareBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(max_length=200)
    question: str = Field(min_length=1)
    strategies: list[str] = Field(min_length=2)
    budget: int = Field(default=8192, gt=0, le=MAX_BUDGET)
    time_anchor: datetime | None = None
    generate: bool = True


def _field_of(location: tuple | list) -> str:
    """'budget' from FastAPI's ('body', 'budget'); 'strategies.1' for list items."""
    parts = [str(part) for part in location if part not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def _validation_error(error: ValidationError | RequestValidationError) -> ApiError:
    problems = error.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    field = _field_of(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return ApiError(422, f"{field}: {message}", field)


def _sse(event: str, payload: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, default=str)}\n\n".encode()


def _generator_error(error: BaseException) -> ApiError:
    from medalign_rag.generation.base import GenerationTimeout

    if isinstance(error, (GenerationTimeout, TimeoutError)):
        return ApiError(504, f"the answering model did not answer in time: {error}")
    return ApiError(502, f"the answering model failed: {error}")


def create_app(pipeline, source, *, token: str | None = None, settings: ServeSettings | None = None,
               logger: logging.Logger | None = None) -> FastAPI:
    """The API and the page over one loaded `pipeline` (phase1 `Pipeline`) reading patients from `source`."""
    from medalign_rag.pipeline import AnswerRequest
    from medalign_rag.retrieval.registry import strategy_names

    settings = settings or ServeSettings()
    if token is not None:
        settings = ServeSettings(**{**settings.__dict__, "token": token})
    log = logger or logging.getLogger(LOGGER_NAME)
    generator = pipeline.generator
    # In-process models (transformers, vLLM) are not made for concurrent calls; HTTP backends queue on their side.
    generation_lock = threading.Lock() if generator is not None and generator.backend != "openai" else None
    strategies = _servable_strategies(strategy_names())
    catalog = PatientCatalog(source, pipeline.counter, record_cache_size=settings.record_cache_size,
                             is_indexed=_index_checker(pipeline, source))

    app = FastAPI(
        title="medalign-rag",
        summary="Ask about a patient's record and check every claim against the events it cites.",
        version=_version(),
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.pipeline = pipeline
    app.state.catalog = catalog
    app.state.settings = settings

    # Added innermost first: the access log sees every answer (401 and 413 included), and every answer
    # (the log's own 500 included) gets the security headers.
    app.add_middleware(BearerTokenMiddleware, token=settings.token, protected_prefix="/api/")
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware, logger=log, routes=lambda: app.router.routes)
    app.add_middleware(SecurityHeadersMiddleware)

    # -- errors -------------------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_error(error).response()

    @app.exception_handler(PatientNotFound)
    async def patient_not_found(request: Request, error: PatientNotFound) -> JSONResponse:
        return ApiError(404, f"no patient {error.args[0]!r} in this data", "patient_id").response()

    @app.exception_handler(MedalignError)
    async def medalign_error(request: Request, error: MedalignError) -> JSONResponse:
        # The user's input could not be served (a bad id, a budget too small for the prompt, ...): say why.
        return ApiError(422, str(error)).response()

    # Anything else: AccessLogMiddleware answers 500 and logs the exception's type only.

    # -- helpers ------------------------------------------------------------------------------------

    def answer_request(body: AskBody | CompareBody, strategy: str) -> Any:
        if len(body.question) > settings.max_question_chars:
            raise ApiError(422, f"question: at most {settings.max_question_chars} characters "
                                f"(got {len(body.question)})", "question")
        try:
            catalog.require(body.patient_id)
        except MedalignError as error:
            raise ApiError(422, f"patient_id: {error.message}", "patient_id") from None
        if strategy not in strategies:
            field = "strategy" if isinstance(body, AskBody) else "strategies"
            raise ApiError(422, f"{field}: unknown strategy {strategy!r}; choose from {', '.join(strategies)}", field)
        try:
            return AnswerRequest(patient_id=body.patient_id, question=body.question, strategy=strategy,
                                 budget=body.budget, time_anchor=body.time_anchor)
        except ValidationError as error:
            raise _validation_error(error) from None

    def complete(prepared: list, wanted: bool) -> list[dict[str, Any]]:
        """`Pipeline.complete`: the batched second half of `Pipeline.answer`. Retrieval is done by now, so a
        failure here is the model's (502, or 504 for a timeout), never the request's."""
        with generation_lock if generation_lock is not None and wanted else contextlib.nullcontext():
            try:
                answers = pipeline.complete(prepared, generate=wanted)
            except Exception as error:
                raise _generator_error(error) from None
        return [with_cited_events(answer) for answer in answers]

    def with_cited_events(answer) -> dict[str, Any]:
        payload = answer.model_dump(mode="json")
        payload["events_by_encounter"] = catalog.events_by_encounter(payload["patient_id"], payload["event_ids"])
        return payload

    def known_patient(patient_id: str) -> str:
        try:
            return catalog.require(patient_id)
        except MedalignError as error:
            raise ApiError(422, f"patient_id: {error.message}", "patient_id") from None

    # -- page ---------------------------------------------------------------------------------------

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    docs_assets = _docs_assets_dir()
    if docs_assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=str(docs_assets)), name="docs-assets")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        if docs_assets is None:
            raise ApiError(404, "the API page needs the fastapi-offline package (pip install -e '.[server]'); "
                                "the schema is at /openapi.json")
        return FileResponse(str(STATIC_DIR / "docs.html"), media_type="text/html")

    # -- API ----------------------------------------------------------------------------------------

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "backend": generator.name if generator is not None else "none",
            "streaming": bool(generator is not None and generator.supports_streaming),
            "context_length": getattr(generator, "context_length", None),
            "patients": len(catalog.patient_ids()),
            "strategies": list(strategies),
            "default_strategy": "temporal" if "temporal" in strategies else strategies[0],
            "budgets": list(BUDGET_CHOICES),
            "max_question_chars": settings.max_question_chars,
            "max_compare_strategies": settings.max_compare_strategies,
            "token_counter": getattr(pipeline.counter, "name", None),
        }

    @app.get("/api/patients", tags=["records"])
    def patients(
        q: str = Query("", max_length=200, description="Only ids containing this text (case-insensitive)"),
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=500),
    ) -> dict[str, Any]:
        ids = [pid for pid in catalog.patient_ids() if q.lower() in pid.lower()]
        items = []
        for patient_id in ids[offset: offset + limit]:
            item = catalog.summary(patient_id).to_json()
            item["indexed"] = catalog.indexed(patient_id)
            items.append(item)
        return {"total": len(ids), "offset": offset, "limit": limit, "items": items}

    @app.get("/api/patients/{patient_id}/timeline", tags=["records"])
    def timeline(
        patient_id: str,
        from_: date | None = Query(None, alias="from", description="Encounters starting on or after this date"),
        to: date | None = Query(None, description="Encounters starting on or before this date"),
        offset: int = Query(0, ge=0),
        limit: int = Query(500, ge=1, le=2000),
    ) -> dict[str, Any]:
        known_patient(patient_id)
        if from_ is not None and to is not None and from_ > to:
            raise ApiError(422, "from: must not be after 'to'", "from")
        record = catalog.record(patient_id)
        encounters = [
            e for e in record.encounters
            if (from_ is None or e.start.date() >= from_) and (to is None or e.start.date() <= to)
        ]
        page_items = []
        for encounter in encounters[offset: offset + limit]:
            kinds: dict[str, int] = {}
            for event in encounter.events:
                kinds[event.kind.value] = kinds.get(event.kind.value, 0) + 1
            page_items.append({
                "encounter_id": encounter.encounter_id,
                "type": encounter.type,
                "start": encounter.start.isoformat(),
                "end": encounter.end.isoformat() if encounter.end else None,
                "events": len(encounter.events),
                "kinds": kinds,
            })
        return {
            "patient_id": patient_id,
            "demographics": record.demographics.model_dump(mode="json"),
            "summary": catalog.summary(patient_id).to_json(),
            "indexed": catalog.indexed(patient_id),
            "total": len(encounters),
            "offset": offset,
            "limit": limit,
            "encounters": page_items,
        }

    @app.get("/api/patients/{patient_id}/events", tags=["records"])
    def events(
        patient_id: str,
        encounter: str = Query(..., max_length=500, description="The encounter's id (from the timeline)"),
        offset: int = Query(0, ge=0),
        limit: int = Query(500, ge=1, le=5000),
    ) -> dict[str, Any]:
        known_patient(patient_id)
        record = catalog.record(patient_id)
        found = next((e for e in record.encounters if e.encounter_id == encounter), None)
        if found is None:
            raise ApiError(404, f"no encounter {encounter!r} for this patient", "encounter")
        return {
            "patient_id": patient_id,
            "encounter_id": encounter,
            "total": len(found.events),
            "offset": offset,
            "limit": limit,
            "events": [event.model_dump(mode="json") for event in found.events[offset: offset + limit]],
        }

    @app.post("/api/ask", tags=["answers"])
    def ask(body: AskBody) -> dict[str, Any]:
        """Retrieve, pack and answer; with backend `none` (or `generate: false`) the answer is null and the
        context and citations are the result."""
        return complete([pipeline.prepare(answer_request(body, body.strategy))], body.generate)[0]

    @app.post("/api/ask/stream", tags=["answers"])
    def ask_stream(body: AskBody) -> StreamingResponse:
        """Server-sent events: `context` (what the model reads, with citations), `token` pieces as the model
        writes them (one piece when the backend cannot stream), then `answer` (the same object as /api/ask) or
        `error` ({status, detail}) if the model fails once the stream has begun."""
        prepared = pipeline.prepare(answer_request(body, body.strategy))
        preview = with_cited_events(pipeline.finish(prepared))
        if generator is None or not body.generate:
            return _event_stream(iter([_sse("context", preview), _sse("answer", preview)]))
        if not generator.supports_streaming:
            (answered,) = complete([prepared], True)
            return _event_stream(iter([
                _sse("context", preview), _sse("token", {"text": answered["answer"]}), _sse("answer", answered),
            ]))
        stream = generator.stream(prepared.prompt, max_tokens=pipeline.max_new_tokens)
        # The first piece is awaited here, so a backend that is down answers 502/504 instead of a broken stream.
        try:
            first = next(stream, None)
        except Exception as error:
            stream.close()
            raise _generator_error(error) from None

        def events_after_first() -> Iterator[bytes]:
            try:
                yield _sse("context", preview)
                if first is not None:
                    yield _sse("token", {"text": first})
                for piece in stream:
                    yield _sse("token", {"text": piece})
                yield _sse("answer", with_cited_events(pipeline.finish(prepared, stream.result)))
            except Exception as error:
                failure = _generator_error(error)
                yield _sse("error", {"status": failure.status, "detail": failure.detail})
            finally:
                stream.close()

        return _event_stream(events_after_first())

    @app.post("/api/compare", tags=["answers"])
    def compare(body: CompareBody) -> dict[str, Any]:
        """One question, several strategies, one budget: each strategy's context and answer, in request order."""
        if len(set(body.strategies)) != len(body.strategies):
            raise ApiError(422, "strategies: each strategy at most once", "strategies")
        if len(body.strategies) > settings.max_compare_strategies:
            raise ApiError(422, f"strategies: at most {settings.max_compare_strategies}", "strategies")
        requests = [answer_request(body, strategy) for strategy in body.strategies]
        return {"results": complete([pipeline.prepare(request) for request in requests], body.generate)}

    return app


def _event_stream(chunks: Iterator[bytes]) -> StreamingResponse:
    # X-Accel-Buffering: a reverse proxy in front must not hold the tokens back.
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


def _servable_strategies(names) -> tuple[str, ...]:
    """Registered strategies a server can run: those needing gold evidence (oracle) have none to get here."""
    from medalign_rag.retrieval.registry import retriever_spec

    return tuple(name for name in names if not retriever_spec(name).needs_gold)


def _index_checker(pipeline, source):
    builder = getattr(pipeline, "builder", None)
    if builder is None or not hasattr(builder, "is_current"):
        return None
    return lambda patient_id: builder.is_current(source, patient_id)


def _docs_assets_dir() -> Path | None:
    """Swagger UI's files from the fastapi-offline package, so /docs works offline and under CSP 'self'."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("medalign-rag")
    except Exception:
        return "0"
