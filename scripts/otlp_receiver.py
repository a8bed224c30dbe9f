"""A small OTLP/HTTP trace receiver for the trace test and benchmark.

`python3 otlp_receiver.py PORT OUT` listens on 127.0.0.1:PORT for
`POST /v1/traces` (protobuf, optionally gzip), decodes each body with the
official `opentelemetry-proto` messages, and appends one JSON line per span
to OUT: service, name, kind, trace/span/parent IDs (hex), links and
attributes. With `--count` (the benchmark) it decodes as much but keeps
only the number of spans received, rewritten in OUT. It answers as a
collector does (an empty ExportTraceServiceResponse), so the exporter
counts the spans as sent. `POST /hook` answers 204: a webhook endpoint
for the trace test.
"""

import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

MAX_BODY = 64 * 1024 * 1024
KINDS = {v: k.removeprefix("SPAN_KIND_").lower() for k, v in Span.SpanKind.items()}
LOCK = threading.Lock()


def value(v):
    """An AnyValue as plain JSON."""
    d = MessageToDict(v)
    if not d:
        return None
    (kind, x), = d.items()
    return int(x) if kind == "intValue" else x


def spans(request):
    for rs in request.resource_spans:
        resource = {a.key: value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "service": resource.get("service.name"),
                    "name": s.name,
                    "kind": KINDS.get(s.kind, str(s.kind)),
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "start_ns": s.start_time_unix_nano,
                    "end_ns": s.end_time_unix_nano,
                    "status": s.status.code,
                    "links": [
                        {"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()}
                        for l in s.links
                    ],
                    "attributes": {a.key: value(a.value) for a in s.attributes},
                }


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if self.path == "/hook":
            # A webhook endpoint for the trace test: takes anything.
            self.rfile.read(min(length, MAX_BODY))
            self.send_response(204)
            self.end_headers()
            return
        if self.path != "/v1/traces" or not 0 < length <= MAX_BODY:
            self.send_error(404 if self.path != "/v1/traces" else 400)
            return
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        if self.server.count_only:
            n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with LOCK:
                self.server.received += n
                with open(self.server.out, "w") as out:
                    out.write(f"{self.server.received}\n")
        else:
            with LOCK, open(self.server.out, "a") as out:
                for span in spans(request):
                    out.write(json.dumps(span) + "\n")
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.out = out
    server.count_only = "--count" in sys.argv[3:]
    server.received = 0
    open(out, "a").close()
    print(f"otlp receiver on 127.0.0.1:{port}, spans to {out}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
