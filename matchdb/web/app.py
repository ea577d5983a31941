"""The Starlette application: built by :func:`create_app` from explicit settings (no import-time state).

Routes, exception handlers and the lifespan (database engine, fetcher, hashing thread pool) all live here;
the Ximilar methods themselves are in :mod:`matchdb.web.stateless`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from matchdb import __version__, metrics
from matchdb.config import Settings
from matchdb.fetch import Fetcher
from matchdb.hashing import warm_up
from matchdb.service.browse import RecordBrowser
from matchdb.service.collections import CollectionService
from matchdb.service.heartbeat import Heartbeat
from matchdb.service.indexes import IndexRegistry
from matchdb.service.records import fetcher_from_settings, loader_from_settings
from matchdb.service.segments import segment_store
from matchdb.storage.database import make_engine
from matchdb.storage.transactions import Writer
from matchdb.web import console
from matchdb.web.auth import Authenticator
from matchdb.web.bodies import BodyReader
from matchdb.web.browser import HostAllowList
from matchdb.web.envelope import ApiError, error_response, request_context
from matchdb.web.guard import Guard
from matchdb.web.methods import API_METHODS, api_routes
from matchdb.web.observe import Observer, configure_logging, labelled
from matchdb.web.openapi import ALIASES, PREFIX
from matchdb.web.operations import operation_routes


def create_app(settings: Settings, *, fetcher: Fetcher | None = None) -> Starlette:
    """The ASGI app for ``settings``. The schema must already be up to date (``matchdb serve`` sees to it).

    ``fetcher`` replaces the ``_url`` downloader built from the settings (tests inject one with their own resolver
    and network backend); the caller then owns it and closes it.
    """
    proc_id = str(uuid.uuid4())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url, settings.database_timeout)
        executor = ThreadPoolExecutor(max_workers=settings.hash_workers, thread_name_prefix="matchdb-hash")
        executor.submit(warm_up)  # compile or load the hashing kernels now, in the pool, not in the first request
        own_fetcher = fetcher is None
        downloader = fetcher or fetcher_from_settings(settings)
        app.state.settings = settings
        app.state.bodies = BodyReader(settings)
        app.state.proc_id = proc_id
        app.state.authenticator = Authenticator(engine)
        app.state.loader = loader_from_settings(settings, downloader, executor)
        app.state.engine = engine
        app.state.collection_lookups = {}  # (workspace, collection-id header) -> the collection, as last found
        app.state.known_collections = {}  # workspace -> its collection ids at its last ping (see stateless.ping)
        app.state.registry = IndexRegistry(engine, segments=segment_store(settings.index_folder, engine))
        app.state.registry.load_all_in_background()
        heartbeat = Heartbeat(engine, app.state.registry, proc_id)
        heartbeat.start()
        writer = Writer(engine, settings.write_attempts, settings.database_timeout)
        app.state.collections = CollectionService(
            engine,
            app.state.loader,
            app.state.registry,
            settings.index_wait,
            writer=writer,
            max_attribute_bytes=settings.max_attribute_bytes,
        )
        app.state.browser = RecordBrowser(engine, app.state.registry, settings.index_wait)
        try:
            yield
        finally:
            heartbeat.stop()
            if own_fetcher:
                await downloader.aclose()
            executor.shutdown(wait=False, cancel_futures=True)
            app.state.registry.close()
            engine.dispose()
            metrics.worker_exited(os.getpid())  # this worker's gauges leave the sums of /metrics

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = "Unknown method or path" if exc.status_code == 404 else str(exc.detail)
        return error_response(request_context(request), exc.status_code, text)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(request_context(request), exc.status, exc.text)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    methods = api_routes()  # declared in web/methods.py, with their OpenAPI description
    # Every method under /v2/ and under Ximilar's own path, so switching from Ximilar changes only the host.
    routes = [
        Route("/healthz", labelled(health, "healthz"), methods=["GET"], include_in_schema=False),
        *operation_routes(settings, API_METHODS),  # /openapi.json, /docs, /metrics
        Mount(PREFIX, routes=methods),
        *(Mount(alias, routes=methods) for alias in ALIASES),
        *console.routes(),
    ]
    configure_logging(settings.log_format)
    middleware = [Middleware(Observer), Middleware(Guard, proc_id=proc_id)]
    if settings.allowed_hosts and "*" not in settings.allowed_hosts:  # a foreign Host (DNS rebinding) gets 400
        middleware.append(Middleware(HostAllowList, allowed_hosts=settings.allowed_hosts))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        # Every other exception ends in the guard (500, or 503 when the database is unavailable): see guard.py.
        exception_handlers={HTTPException: http_error, ApiError: api_error},
        # The observer (access log, request metrics) wraps the guard, so it sees the status the guard decided.
        middleware=middleware,
    )


def app_from_env() -> Starlette:
    """Factory for uvicorn workers (``matchdb serve``): settings from ``MATCHDB_*``."""
    return create_app(Settings.from_env())
