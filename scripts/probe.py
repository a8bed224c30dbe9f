#!/usr/bin/env python3
"""The hostile-client probe (run by scripts/probe.sh against a fresh API).

Tries what an attacker on the public port would, and reports each finding:
made-up methods (no metric series, no memory kept), a request head that
never ends (held 60 s, or trickled), a stream token from a 30-second token,
a viewer calling the ledger verification, an 8 MiB body, /metrics on the
public port. Exits 1 if anything is found.

Arguments: API_HOST API_PORT METRICS_PORT API_PID; the environment gives
USER_TOKEN_30S (a user token valid 30 s), VIEWER_TOKEN, ADMIN_TOKEN and
DB (the database, for counting recorded verifications).
"""
import json
import os
import random
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HOST, PORT, METRICS_PORT, PID = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
BASE = f"http://{HOST}:{PORT}"
findings = []
lines = []


def report(ok, what):
    lines.append(("ok   " if ok else "FOUND") + "  " + what)
    if not ok:
        findings.append(what)


def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def raw(request, timeout=10):
    """Sends bytes on a new connection; the status code answered, or None."""
    with socket.create_connection((HOST, PORT), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def call(method, path, token=None, body=None, port=PORT):
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", method=method, data=body)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def made_up_method():
    return "X" + "".join(random.choices(string.ascii_uppercase, k=8 * 1024 - 1))


def made_up_methods():
    def one():
        request = f"{made_up_method()} /v1/credits HTTP/1.1\r\nHost: genq\r\nConnection: close\r\n\r\n"
        return raw(request.encode())

    # Warm-up with the same requests: the allocator's per-thread pools fill
    # once (a few MB, whatever the method). What is left to see is growth
    # per request, which a label per method would be (about 8 KB each).
    for _ in range(2000):
        one()
    before = rss_kib()
    statuses = [one() for _ in range(2000)]
    after = rss_kib()
    bad = [s for s in statuses if s is None or s >= 500]
    report(not bad, f"2,000 made-up 8 KB methods answered 4xx (statuses seen: {sorted(set(statuses), key=str)})")
    grew = after - before
    report(grew <= 8 * 1024, f"the API's RSS after 2,000 made-up methods: {before} KiB -> {after} KiB ({grew:+} KiB; limit +8192)")
    _, text = call("GET", "/metrics", port=METRICS_PORT)
    text = text.decode()
    series = [l for l in text.splitlines() if l.startswith("genq_http_responses_total{")]
    named = "XX" in text
    report(not named and len(series) < 50,
           f"metric series after the made-up methods: {len(series)}" + (", some naming a made-up method" if named else ", none naming a made-up method"))


def held_head(trickle):
    """A head that never ends: held (or trickled a byte every 5 s) up to 60 s."""
    started = time.monotonic()
    s = socket.create_connection((HOST, PORT), timeout=65)
    s.sendall(b"GET /v1/credits HTTP/1.1\r\nHost: genq\r\nX-Slow: ")
    s.settimeout(5 if trickle else 65)
    closed_after = None
    while time.monotonic() - started < 60:
        try:
            if s.recv(4096) == b"":
                closed_after = time.monotonic() - started
                break
        except socket.timeout:
            try:
                s.sendall(b"a")
            except OSError:
                closed_after = time.monotonic() - started
                break
        except OSError:
            closed_after = time.monotonic() - started
            break
    s.close()
    kind = "trickled a byte every 5 s" if trickle else "half-sent and held"
    report(closed_after is not None and closed_after < 30,
           f"a request head {kind} for up to 60 s: cut off after {closed_after and round(closed_after, 1)} s")


def stream_token():
    token = os.environ["USER_TOKEN_30S"]
    payload = json.loads(b64(token.split(".")[1]))
    status, body = call("POST", "/v1/stream-tokens", token, b"{}")
    if status != 201:
        report(False, f"a stream token could not be minted: {status}")
        return
    stream = json.loads(body)["token"]
    exp = json.loads(b64(stream.split(".")[1]))["exp"]
    report(exp <= payload["exp"], f"a stream token from a 30-second token expires at {exp}, its parent at {payload['exp']}")


def b64(part):
    import base64
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verifications():
    out = subprocess.run(["psql", "-qtA", "-h", "127.0.0.1", "-U", "postgres", os.environ["DB"],
                          "-c", "SELECT count(*) FROM ledger_verifications"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def viewer_verify():
    viewer = os.environ["VIEWER_TOKEN"]
    before = verifications()
    statuses = [call("GET", "/v1/admin/ledger/verify", viewer)[0] for _ in range(20)]
    after = verifications()
    report(set(statuses) == {200} and after == before,
           f"20 viewer reads of the ledger verification: {sorted(set(statuses))}, verifications recorded {before} -> {after}")
    status, _ = call("POST", "/v1/admin/ledger/verify", viewer, b"{}")
    report(status == 403, f"a viewer running a verification: {status}")
    status, _ = call("POST", "/v1/admin/ledger/verify", os.environ["ADMIN_TOKEN"], b"{}")
    report(status == 200, f"an admin running a verification: {status}")


def big_body():
    body = b'{"prompt": "' + b"a" * (8 << 20) + b'"}'
    before = rss_kib()
    try:
        status, _ = call("POST", "/v1/generations", os.environ["ADMIN_TOKEN"], body)
    except (ConnectionError, urllib.error.URLError) as e:
        status = f"connection closed ({e})"
    after = rss_kib()
    report(status in (400, 413) or str(status).startswith("connection closed"),
           f"an 8 MiB body: {status}; RSS {before} -> {after} KiB")
    report(call("GET", "/healthz")[0] == 200, "the API answers after all of it")


def public_metrics():
    status, _ = call("GET", "/metrics")
    report(status == 404, f"/metrics on the public port: {status}")


heads = [threading.Thread(target=held_head, args=(t,)) for t in (False, True)]
for t in heads:
    t.start()
made_up_methods()
stream_token()
viewer_verify()
big_body()
public_metrics()
for t in heads:
    t.join()
print("\n".join(lines))
print(f"probe: {len(findings)} finding(s)")
sys.exit(1 if findings else 0)
