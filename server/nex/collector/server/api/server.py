"""The grpc.aio server: our five services, health (NOT_SERVING while draining) and
reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

from nex.collector.server.api.edge import EdgeInterceptor
from nex.collector.server.api.interceptors import ServerInterceptor
from nex.collector.server.api.servicers.context_refs import ContextRefServicer
from nex.collector.server.api.servicers.datasets import DatasetServicer
from nex.collector.server.api.servicers.evidence import EvidenceServicer
from nex.collector.server.api.servicers.teacher import TeacherServicer
from nex.collector.server.api.servicers.templates import TemplateServicer
from nex.collector.server.bootstrap import Container, StartupError
from nex.collector.server.config import Settings
from nex.collector.v1 import (
    context_ref_service_pb2,
    context_ref_service_pb2_grpc,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    evidence_service_pb2,
    evidence_service_pb2_grpc,
    teacher_service_pb2,
    teacher_service_pb2_grpc,
    template_service_pb2,
    template_service_pb2_grpc,
)

log = logging.getLogger(__name__)

# What the shipped client accepts. Replies are kept far below it by the caps in
# domain/sizes.py; this is the last line, not the plan.
MAX_SEND_BYTES = 64 * 1024 * 1024

# How often the server checks that it can reach Redis (where runs are queued).
DEPENDENCY_CHECK_S = 2.0

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (context_ref_service_pb2, "ContextRefService"),
        (template_service_pb2, "TemplateService"),
        (teacher_service_pb2, "TeacherService"),
        (dataset_service_pb2, "DatasetService"),
        (evidence_service_pb2, "EvidenceService"),
    )
)


def _tls_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from NEX_COLLECTOR_TLS_CERT / _KEY (PEM files), or None for plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        key, chain = settings.tls_key.read_bytes(), settings.tls_cert.read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read the TLS certificate or key: {exc}") from exc
    if b"-----BEGIN" not in key or b"-----BEGIN" not in chain:
        raise StartupError(
            "NEX_COLLECTOR_TLS_CERT and NEX_COLLECTOR_TLS_KEY must be PEM files "
            f"({settings.tls_cert}, {settings.tls_key})"
        )
    return grpc.ssl_server_credentials([(key, chain)])


class GrpcServer:
    """Start, serve, drain: `await start()`, then `await stop(grace)`."""

    def __init__(self, container: Container, addr: str) -> None:
        self._container = container
        self._addr = addr
        self._server = aio.server(
            # In order, outermost first: the edge check runs after authentication.
            interceptors=[
                ServerInterceptor(container.settings.tokens),
                EdgeInterceptor(SERVICE_NAMES),
            ],
            options=[
                # A larger body is RESOURCE_EXHAUSTED from grpc itself, before
                # any handler (or the auth check) sees it.
                ("grpc.max_receive_message_length", container.settings.max_request_bytes),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                # gRPC sets SO_REUSEPORT by default: a second server on the same
                # port would silently share its traffic. Refuse to start instead.
                ("grpc.so_reuseport", 0),
            ],
        )
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # stubs lack .aio
        self._monitor: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        c = self._container
        context_ref_service_pb2_grpc.add_ContextRefServiceServicer_to_server(
            ContextRefServicer(c.context_refs), self._server
        )
        template_service_pb2_grpc.add_TemplateServiceServicer_to_server(
            TemplateServicer(c.templates), self._server
        )
        teacher_service_pb2_grpc.add_TeacherServiceServicer_to_server(
            TeacherServicer(c.teacher, c.watcher, c.teacher_endpoints),
            self._server,
        )
        dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(
            DatasetServicer(c.datasets),
            self._server,
        )
        evidence_service_pb2_grpc.add_EvidenceServiceServicer_to_server(
            EvidenceServicer(c.evidence),
            self._server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        credentials = _tls_credentials(c.settings)
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(self._addr)
            else:
                self.port = self._server.add_secure_port(self._addr, credentials)
        except RuntimeError as exc:  # grpc says only "Failed to bind to address"
            why = "the address is in use or not available here"
            if credentials is not None:
                why += ", or the TLS certificate and key do not form a valid pair"
            raise StartupError(f"cannot listen on {self._addr}: {why}") from exc
        await self._server.start()
        await self._set_serving(True)
        self._monitor = asyncio.create_task(self._watch_redis(), name="redis-health")
        log.info("serving on %s", self.address)
        return self.port

    @property
    def address(self) -> str:
        host = self._addr.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status)

    async def _watch_redis(self) -> None:
        """NOT_SERVING, with the reason in the log, while Redis cannot be reached:
        runs could be created but no worker would take them."""
        reachable = True
        while True:
            await asyncio.sleep(DEPENDENCY_CHECK_S)
            try:
                await asyncio.wait_for(self._container.redis.ping(), DEPENDENCY_CHECK_S)
                problem = None
            except (OSError, RedisError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            if problem is not None and reachable:
                log.error("cannot reach Redis (%s): health is NOT_SERVING", problem)
            elif problem is None and not reachable:
                log.info("Redis is reachable again: health is SERVING")
            if (problem is None) != reachable:
                reachable = problem is None
                await self._set_serving(reachable)

    async def stop(self, grace: float = 5.0) -> None:
        """Reports NOT_SERVING, lets in-flight calls finish for `grace` seconds, stops."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self._set_serving(False)
        self._container.watcher.close()
        await self._server.stop(grace)

    async def wait(self) -> None:
        await self._server.wait_for_termination()
