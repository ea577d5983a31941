"""The Starlette application: built by :func:`create_app` from explicit settings (no import-time state).

Routes, exception handlers and the lifespan (database engine, fetcher, hashing thread pool) all live here;
the Ximilar methods themselves are in :mod:`matchdb.web.stateless`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from matchdb import __version__
from matchdb.config import Settings
from matchdb.fetch import Fetcher
from matchdb.hashing import warm_up
from matchdb.service.collections import CollectionService
from matchdb.service.heartbeat import Heartbeat
from matchdb.service.indexes import IndexRegistry
from matchdb.service.records import fetcher_from_settings, loader_from_settings
from matchdb.storage.database import make_engine
from matchdb.web import collections, stateless
from matchdb.web.auth import Authenticator
from matchdb.web.envelope import ApiError, RequestContext, error_response

log = logging.getLogger("matchdb")


def create_app(settings: Settings, *, fetcher: Fetcher | None = None) -> Starlette:
    """The ASGI app for ``settings``. The schema must already be up to date (``matchdb serve`` sees to it).

    ``fetcher`` replaces the ``_url`` downloader built from the settings (tests inject one with their own resolver
    and network backend); the caller then owns it and closes it.
    """
    proc_id = str(uuid.uuid4())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        executor = ThreadPoolExecutor(max_workers=settings.hash_workers, thread_name_prefix="matchdb-hash")
        executor.submit(warm_up)  # compile or load the hashing kernels now, in the pool, not in the first request
        own_fetcher = fetcher is None
        downloader = fetcher or fetcher_from_settings(settings)
        app.state.settings = settings
        app.state.proc_id = proc_id
        app.state.authenticator = Authenticator(engine)
        app.state.loader = loader_from_settings(settings, downloader, executor)
        app.state.engine = engine
        app.state.registry = IndexRegistry(engine)
        app.state.registry.load_all_in_background()
        heartbeat = Heartbeat(engine, app.state.registry, proc_id)
        heartbeat.start()
        app.state.collections = CollectionService(engine, app.state.loader, app.state.registry, settings.index_wait)
        try:
            yield
        finally:
            heartbeat.stop()
            if own_fetcher:
                await downloader.aclose()
            executor.shutdown(wait=False, cancel_futures=True)
            app.state.registry.close()
            engine.dispose()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = "Unknown method or path" if exc.status_code == 404 else str(exc.detail)
        return error_response(RequestContext(proc_id), exc.status_code, text)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(RequestContext(proc_id), exc.status, exc.text)

    async def server_error(request: Request, exc: Exception) -> Response:
        context = RequestContext(proc_id)
        log.exception("internal error (request_id %s)", context.request_id, exc_info=exc)
        return error_response(context, 500, f"Internal server error (request_id {context.request_id})")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    routes = [
        Route("/healthz", health, methods=["GET"]),
        Route("/v2/ping", stateless.ping, methods=["GET", "POST"]),
        Route("/v2/visual_hash", stateless.visual_hash, methods=["POST"]),
        Route("/v2/remove_duplicates", stateless.remove_duplicates, methods=["POST"]),
        Route("/v2/rank_images", stateless.rank_images, methods=["POST"]),
        Route("/v2/insert", collections.insert, methods=["POST"]),
        Route("/v2/delete", collections.delete, methods=["POST"]),
        Route("/v2/update", collections.update, methods=["POST"]),
        Route("/v2/get", collections.get, methods=["POST"]),
        Route("/v2/allIDs", collections.all_ids, methods=["POST"]),
        Route("/v2/visualKNN", collections.visual_knn, methods=["POST"]),
        Route("/v2/visualRankRecords", collections.visual_rank_records, methods=["POST"]),
        Route("/v2/collections", collections.collections_endpoint, methods=["GET", "POST"]),
        Route("/v2/collections/{collection_id}", collections.collection_delete, methods=["DELETE"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, ApiError: api_error, Exception: server_error},
    )


def app_from_env() -> Starlette:
    """Factory for uvicorn workers (``matchdb serve``): settings from ``MATCHDB_*``."""
    return create_app(Settings.from_env())
