"""Checks one job's trace as the OTLP receiver wrote it, and prints it.

`python3 check_trace.py SPANS TRACE_ID CLIENT_SPAN_ID JOB_ID` waits (60 s at
most) until the trace in SPANS (the receiver's JSON lines) holds everything
below, then prints it as a tree; exits 1 with what is missing otherwise.

- spans of both genq-api and genq-worker, all in the client's trace;
- the API's server span is the child of the client's span (its traceparent);
- the outbox relay's publish (a producer span of genq-worker) is the child of
  the API's submission, and each consumer span the child of a producer span;
- every other span's parent is in the trace: one tree;
- the provider call, the download, the settlement and a webhook delivery
  are there, and the worker's steps name the job (genq.job_id).
"""

import json
import sys
import time


def load(path, trace_id):
    with open(path) as f:
        spans = [json.loads(line) for line in f if line.strip()]
    return [s for s in spans if s["trace_id"] == trace_id]


def problems(spans, client_span, job_id):
    out = []
    by_id = {s["span_id"]: s for s in spans}
    services = {s["service"] for s in spans}
    for service in ("genq-api", "genq-worker"):
        if service not in services:
            out.append(f"no span from {service}")
    servers = [s for s in spans if s["kind"] == "server" and s["service"] == "genq-api"]
    if not any(s["parent_span_id"] == client_span for s in servers):
        out.append("the API's server span is not the child of the client's traceparent")
    producers = [s for s in spans if s["kind"] == "producer" and s["service"] == "genq-worker"]
    if not any(by_id.get(p["parent_span_id"], {}).get("service") == "genq-api" for p in producers):
        out.append("no relay publish whose parent is the API's submission")
    consumers = [s for s in spans if s["kind"] == "consumer"]
    if not consumers:
        out.append("no consumer span")
    for c in consumers:
        if by_id.get(c["parent_span_id"], {}).get("kind") != "producer":
            out.append(f"consumer span {c['name']} is not the child of a producer span")
    for s in spans:
        if s["parent_span_id"] not in by_id and s["parent_span_id"] != client_span:
            out.append(f"span {s['name']} ({s['service']}) has a parent outside the trace")
    names = {s["name"] for s in spans}
    for wanted in ("POST provider", "GET download", "settle succeeded", "start", "poll", "archive",
                   "POST webhook"):
        if wanted not in names:
            out.append(f"no {wanted!r} span")
    steps = [s for s in spans if s["name"] in ("start", "poll", "create")]
    if not steps or any(s["attributes"].get("genq.job_id") != job_id for s in steps):
        out.append("a step span does not name the job (genq.job_id)")
    return out


def tree(spans, client_span):
    children = {}
    for s in spans:
        children.setdefault(s["parent_span_id"], []).append(s)
    lines = []

    def walk(parent, depth):
        for s in sorted(children.get(parent, []), key=lambda s: s["start_ns"]):
            ms = (s["end_ns"] - s["start_ns"]) / 1e6
            keep = ("genq.provider", "http.response.status_code", "server.address",
                    "messaging.rabbitmq.destination.routing_key", "db.operation.name", "http.route")
            attrs = ", ".join(f"{k}={s['attributes'][k]}" for k in keep if k in s["attributes"])
            lines.append(f"{'  ' * depth}{s['name']}  [{s['service']}, {s['kind']}, {ms:.1f} ms]"
                         + (f"  {attrs}" if attrs else ""))
            walk(s["span_id"], depth + 1)

    walk(client_span, 0)
    return "\n".join(lines)


def main():
    path, trace_id, client_span, job_id = sys.argv[1:5]
    deadline = time.monotonic() + 60
    while True:
        spans = load(path, trace_id)
        missing = problems(spans, client_span, job_id)
        if not missing:
            break
        if time.monotonic() > deadline:
            print(tree(spans, client_span))
            print("the trace is not as it should be:\n  " + "\n  ".join(missing), file=sys.stderr)
            sys.exit(1)
        time.sleep(0.5)
    print(f"trace {trace_id}: {len(spans)} spans, from {', '.join(sorted({s['service'] for s in spans}))}")
    print(tree(spans, client_span))


if __name__ == "__main__":
    main()
