"""`medalign-rag serve`: a JSON API and one web page over the answering pipeline (FastAPI + uvicorn).

`create_app(pipeline, source, token=...)` builds the ASGI app; `run_server(app, host=..., port=...)` serves it.
The server is a thin shell: every answer goes through `Pipeline.prepare` / `Pipeline.finish`, the same path
`ask` and `bench` use; nothing here knows how retrieval or packing works.
"""

from medalign_rag.serve.app import ServeSettings, create_app
from medalign_rag.serve.server import check_bind, run_server

__all__ = ["ServeSettings", "check_bind", "create_app", "run_server"]
