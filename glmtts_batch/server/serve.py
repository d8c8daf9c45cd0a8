"""Starting the server: check the bind, wrap the app in the request guard, run uvicorn."""

from __future__ import annotations

import sys
from collections.abc import Callable

import uvicorn

from glmtts_batch.engines.base import Engine
from glmtts_batch.server.app import create_app
from glmtts_batch.server.config import ServeConfig, check_bind
from glmtts_batch.server.engine_host import EngineHost
from glmtts_batch.server.guard import RequestGuard


def _stderr(message: str) -> None:
    print(f"glmtts-batch serve: {message}", file=sys.stderr, flush=True)


def build_asgi(config: ServeConfig, engine: Engine, *, log: Callable[[str], None] = _stderr) -> RequestGuard:
    """The app behind its guard (the guard answers 401/413 before any route runs)."""
    check_bind(config.host, config.token)
    app = create_app(config, EngineHost(engine), log=log)
    return RequestGuard(app, token=config.token, max_body_bytes=config.limits.max_job_bytes)


def serve(config: ServeConfig, engine: Engine, *, log: Callable[[str], None] = _stderr) -> None:
    """Serve until SIGINT/SIGTERM; the running job finishes its current task and resumes on restart."""
    asgi = build_asgi(config, engine, log=log)
    auth = "bearer token required" if config.token else "no token (loopback only)"
    log(f"listening on http://{config.host}:{config.port} ({auth}); jobs in {config.jobs_dir}")
    uvicorn.run(
        asgi, host=config.host, port=config.port, log_level="warning", access_log=False, timeout_graceful_shutdown=30
    )
