"""What the user waits for after the provider is done: for N jobs, one at a
time, submit, follow the job's event stream until `succeeded`, and split
the time from the provider finishing (its `running` event plus the
generation time) to the stream's `succeeded`: the wake (callback, poll),
the copy (download, store, sync: the `archived` event's duration), and the
event's way to the stream. Prints percentiles; stdlib only.

Environment: API (host:port), TOKEN, N, GEN_MS, LABEL."""

import datetime
import http.client
import json
import os
import statistics
import time

API = os.environ["API"]
TOKEN = os.environ["TOKEN"]
N = int(os.environ.get("N", "50"))
GEN = int(os.environ.get("GEN_MS", "1000")) / 1000
LABEL = os.environ.get("LABEL", "")
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def at(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def request(method, path, body=None):
    c = http.client.HTTPConnection(API, timeout=120)
    c.request(method, path, body=json.dumps(body) if body else None, headers=HEADERS)
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: HTTP {r.status} {data[:200]!r}")
    return json.loads(data)


def follow(job_id):
    """Reads the job's stream until its succeeded event; the local time then."""
    c = http.client.HTTPConnection(API, timeout=300)
    c.request("GET", f"/v1/generations/{job_id}/events", headers=HEADERS)
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"stream: HTTP {r.status}")
    while True:
        line = r.fp.readline()
        if not line:
            raise SystemExit("the stream ended before succeeded")
        if line.startswith(b"data:"):
            event = json.loads(line[5:])
            if event.get("to_status") == "succeeded":
                t = time.time()
                c.close()
                return t
            if event.get("to_status") in ("failed", "canceled", "dead", "rejected"):
                raise SystemExit(f"job {job_id} ended {event['to_status']}: {event.get('message')}")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


rows = []
for i in range(N):
    job = request("POST", "/v1/generations", {"prompt": f"after the provider {i}"})
    received = follow(job["id"])
    events = request("GET", f"/v1/generations/{job['id']}")["events"]
    running = next(at(e["at"]) for e in events if e.get("to_status") == "running")
    archived = next(e for e in events if e["kind"] == "archived")
    succeeded = next(at(e["at"]) for e in events if e.get("to_status") == "succeeded")
    copy = archived["data"]["duration_ms"] / 1000
    finished = running + GEN
    rows.append({
        "total": received - finished,
        "wake": at(archived["at"]) - copy - finished,
        "copy": copy,
        "to_stream": received - succeeded,
        "bytes": archived["data"]["bytes"],
    })

ms = lambda s: f"{s * 1000:.0f}"
print(f"{LABEL}: {N} jobs of {rows[0]['bytes']:,} bytes")
for part in ("total", "wake", "copy", "to_stream"):
    values = [r[part] for r in rows]
    print(f"  {part:9} p50 {ms(pct(values, 50)):>6} ms  p99 {ms(pct(values, 99)):>6} ms  mean {ms(statistics.mean(values)):>6} ms")
