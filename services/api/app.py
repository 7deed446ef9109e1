"""The FastAPI application: ``create_app(infra, api_settings)``.

The lifespan opens the process's Kafka producer, Redis connection pool, shared pub/sub
connection (:class:`.progress_hub.ProgressHub`) and MinIO client (retrying for a while if they
are still starting, as under compose), makes sure the events and dead-letter topics and the
bucket exist, and closes everything on shutdown. No I/O happens at import or in
``create_app`` itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse

from services.common.api_keys import ApiKeyStore, Role
from services.common.blobs import BlobStore
from services.common.errors import PlatformUnavailable
from services.common.kafka_bus import KafkaBus
from services.common.logging import get_logger
from services.common.settings import ApiSettings, InfraSettings
from services.common.state_store import StateStore

from . import routes_graphs, routes_invocations, routes_keys
from .auth import AUTH_RESPONSES, Authenticator, Requires
from .docs import install_docs
from .errors import install_error_handlers
from .metrics import metrics_router
from .middleware import ApiMiddleware
from .progress_hub import ProgressHub
from .routes_graphs import Service
from .schemas import ExecutorList, Health
from .service import ApiService
from .ui import install_ui
from .validation import valid_path_ids

__all__ = ["create_app"]

_log = get_logger(__name__)


async def _open(stack: AsyncExitStack, infra: InfraSettings, api: ApiSettings) -> ApiService:
    bus = await stack.enter_async_context(KafkaBus(infra, client_id=f"{infra.prefix}-api"))
    store = await stack.enter_async_context(StateStore(infra))
    hub = await stack.enter_async_context(ProgressHub(store))
    blobs = BlobStore(infra)
    service = ApiService(
        infra,
        bus,
        store,
        blobs,
        hub,
        direct_start=api.direct_start,
        task_hints=api.task_hints,
        failpoint=api.failpoint,
    )
    await bus.ensure_topics(
        {service.names.events_topic: infra.events_partitions, service.names.deadletter_topic: 1}
    )
    await blobs.ensure_bucket()
    return service


async def _open_with_retry(
    stack: AsyncExitStack, infra: InfraSettings, api: ApiSettings, timeout_sec: float
) -> ApiService:
    deadline = time.monotonic() + timeout_sec
    delay = 0.5
    while True:
        attempt = AsyncExitStack()
        try:
            service = await _open(attempt, infra, api)
        except PlatformUnavailable as exc:
            await attempt.aclose()
            if time.monotonic() + delay > deadline:
                raise
            _log.warning("backends not ready; retrying", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        except BaseException:
            await attempt.aclose()
            raise
        stack.push_async_exit(attempt)
        return service


def create_app(
    infra: InfraSettings,
    api_settings: ApiSettings,
    *,
    startup_timeout_sec: float = 60.0,
    fast_routes: bool = True,
) -> FastAPI:
    """The app; ``fast_routes=False`` serves the hot routes through FastAPI too (they are
    otherwise answered by :class:`.fast_routes.FastRoutes`; the parity tests compare)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            service = await _open_with_retry(stack, infra, api_settings, startup_timeout_sec)
            app.state.service = service
            app.state.authenticator = Authenticator(
                api_settings, ApiKeyStore(service.store.redis, service.names, service.store.link)
            )
            _log.info(
                "api ready",
                prefix=infra.prefix,
                kafka=infra.kafka_bootstrap,
                redis=infra.redis_url_redacted,
                minio=infra.minio_endpoint,
            )
            yield
            _log.info("api stopping")

    app = FastAPI(
        title="Indexify",
        summary="Register compute graphs, invoke them, follow their progress, read outputs.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(valid_path_ids)],  # ids checked before any key is built (400)
        docs_url=None,  # served with local assets instead of a CDN's (install_docs)
        redoc_url=None,
        # No OpenTelemetry here: off, FastAPI skips looking up the global providers (a read
        # of os.environ each) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.api_settings = api_settings
    if not api_settings.insecure_no_auth and not api_settings.admin_key_sha256:
        _log.info(
            "only API keys stored in Redis are accepted (no INDEXIFY_API_ADMIN_KEY_SHA256); "
            "`indexify-cli keys generate` makes a first admin key"
        )
    if api_settings.insecure_no_auth:
        _log.warning(
            "INSECURE: --insecure-no-auth is set; every request is accepted WITHOUT an API key, "
            "as an admin of every namespace: anyone who reaches this port can run code on the "
            "executors. Use it only for local experiments on loopback."
        )
    install_error_handlers(app)
    install_docs(app)
    app.include_router(metrics_router(api_settings))
    app.include_router(routes_graphs.router)
    app.include_router(routes_invocations.router)
    app.include_router(routes_keys.router)
    install_ui(app)

    @app.get("/health", tags=["platform"], responses={503: {"model": Health}})
    async def health(service: Service) -> Response:
        """200 when Redis, Kafka and MinIO answer, else 503 with what is down."""
        report = await service.health()
        status = 200 if report.status == "ok" else 503
        return JSONResponse(report.model_dump(), status_code=status)

    @app.get(
        "/internal/executors",
        tags=["platform"],
        responses=AUTH_RESPONSES,
        dependencies=[Depends(Requires(Role.admin, scope="global"))],
    )
    async def executors(service: Service) -> ExecutorList:
        """Executors that sent a heartbeat recently, with their labels and load."""
        return ExecutorList(executors=await service.store.registry.executors())

    # metrics (refusals count too), then the body limit, then the request guards, then the
    # hot routes' own dispatch: one layer, added once every route is declared
    app.add_middleware(
        ApiMiddleware,
        max_body_bytes=api_settings.max_body_bytes,
        max_json_depth=api_settings.max_json_depth,
        body_timeout_sec=api_settings.body_timeout_sec,
        allowed_origins=api_settings.allowed_origins,
        fast_routes=routes_invocations.fast_routes(app) if fast_routes else None,
    )
    return app
