"""The trace half of an OpenTelemetry collector, for tests: OTLP/gRPC on 127.0.0.1, spans kept."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)


class OTLPReceiver(TraceServiceServicer):
    """OTLP/gRPC export requests, kept as received."""

    def __init__(self) -> None:
        self.requests: list = []

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        self.requests.append(request)
        return ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict, object]]:
        """(resource attributes, span) for every span received."""
        return [
            ({a.key: a.value.string_value for a in resource.resource.attributes}, span)
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def wait_for(self, wanted: Callable[[list[tuple[dict, object]]], list], seconds: float = 30) -> list:
        """What `wanted` picks from the spans received, once it picks any (exporters send in batches)."""
        deadline = time.monotonic() + seconds
        while not (picked := wanted(self.spans())) and time.monotonic() < deadline:
            time.sleep(0.5)
        return picked


@contextlib.contextmanager
def running_otlp_receiver() -> Iterator[tuple[OTLPReceiver, str]]:
    """A receiver and its endpoint (http://127.0.0.1:PORT) while the block runs."""
    receiver, server = OTLPReceiver(), grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
