"""Serving the app with uvicorn, with the bind rule: loopback by default, anything else only with a token."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys

from medalign_rag.errors import MedalignError

TOKEN_ENV = "MEDALIGN_RAG_TOKEN"
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def resolve_token(token: str | None) -> str | None:
    """`--token`, else $MEDALIGN_RAG_TOKEN, else None; a short token is refused (it would be guessable)."""
    value = token if token else os.environ.get(TOKEN_ENV) or None
    if value is not None and len(value) < MIN_TOKEN_CHARS:
        raise MedalignError(
            f"the token must have at least {MIN_TOKEN_CHARS} characters; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    return value


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token: the API returns patient records."""
    if not is_loopback(host) and not token:
        raise MedalignError(
            f"refusing to listen on {host!r} without a token: records would be readable by anyone who can reach "
            f"this port. Set --token or ${TOKEN_ENV}, or keep the default --host 127.0.0.1"
        )


def log_config(level: str = "INFO") -> dict:
    """Our access log (route templates only) and uvicorn's start/stop lines; uvicorn's own access log is off
    because it prints the concrete path, which carries patient ids."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {
            "medalign_rag.serve": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        },
    }


def run_server(app, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
               log_level: str = "INFO") -> None:
    """Serve `app` until interrupted (blocks)."""
    import uvicorn

    check_bind(host, token)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=log_config(log_level.upper()),
        server_header=False,
        proxy_headers=False,
        # Bounded: past this many open connections uvicorn answers 503 instead of queueing without end.
        limit_concurrency=256,
    )
    shown = f"[{host}]" if ":" in host else host
    print(f"serving on http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)", file=sys.stderr, flush=True)
    logging.getLogger("medalign_rag.serve").info("bound to %s:%d, token %s", host, port,
                                                 "required" if token else "off (loopback only)")
    uvicorn.Server(config).run()
