"""An application instrumented with the OpenTelemetry SDK, for weft's tracing tests.

    otel_app.py server OTLP_URL N      serve N requests on 127.0.0.1 (the port is the first
                                       line printed), each a SERVER span continuing the
                                       caller's trace (W3C traceparent), then flush and exit
    otel_app.py client OTLP_URL PROXY HOST N
                                       make N GET /hello requests for HOST through the sidecar's
                                       outbound listener PROXY (host:port), each inside a
                                       CLIENT span whose context goes in traceparent; print
                                       "ok N" and each span's trace id, flush and exit

Spans go to OTLP_URL with the SDK's OTLP/gRPC exporter; OTEL_TRACES_SAMPLER chooses the
client's sampler as the SDK reads it (the server follows its caller).
"""

import http.server
import sys
import urllib.request

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


def provider(name, otlp):
    p = TracerProvider(resource=Resource.create({"service.name": name}))
    p.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp, insecure=True)))
    trace.set_tracer_provider(p)
    return p


def server(otlp, n):
    p = provider("otel-server", otlp)
    tracer = trace.get_tracer("otel_app")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ctx = propagate.extract(dict(self.headers.items()))
            with tracer.start_as_current_span(
                "GET /hello", context=ctx, kind=trace.SpanKind.SERVER
            ) as span:
                span.set_attribute("http.request.method", "GET")
                body = b"hello"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    s = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(s.server_address[1], flush=True)
    for _ in range(n):
        s.handle_request()
    p.shutdown()


def client(otlp, proxy, host, n):
    p = provider("otel-client", otlp)
    tracer = trace.get_tracer("otel_app")
    ids = []
    for _ in range(n):
        with tracer.start_as_current_span("GET web", kind=trace.SpanKind.CLIENT) as span:
            headers = {"host": host}
            propagate.inject(headers)
            req = urllib.request.Request(f"http://{proxy}/hello", headers=headers)
            with urllib.request.urlopen(req, timeout=10) as rsp:
                assert rsp.status == 200, rsp.status
                assert rsp.read() == b"hello"
            ids.append(format(span.get_span_context().trace_id, "032x"))
    p.shutdown()
    print(f"ok {n}")
    for i in ids:
        print(i)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    else:
        client(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
