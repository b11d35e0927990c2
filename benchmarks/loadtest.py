"""Load test for the bpr service: N concurrent clients, throughput and latency percentiles.

    # start a server for the run (stopped at the end), DAVIS images + OSVOS masks, 16 clients:
    python benchmarks/loadtest.py --spawn --checkpoint model.pt --clients 16 --requests 200
    # or against a server already running on this machine:
    python benchmarks/loadtest.py --url http://127.0.0.1:8000 --clients 4 --duration 30

Bounded: it stops after ``--requests`` requests or ``--duration`` seconds, whichever comes
first, and it only talks to loopback addresses (it refuses any other host). Each client
sends the next (image, instances) pair of the input set to POST /refine (or the image alone
to POST /segment) as soon as its previous answer arrived. The report: answers by status,
requests/s, instances/s, patches/s and the mean network batch (from /metrics), and latency
p50/p95/p99/max of the successful requests.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bpr.io.datasets import shared_data_root

DEFAULT_SET = shared_data_root() / "davis-dev-real"


def check_loopback(url: str) -> None:
    """Refuse anything that is not this machine: a load test must never leave it."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise SystemExit(f"loadtest: cannot resolve {host!r}: {exc}") from None
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"loadtest: {host!r} is not a loopback address; this script only loads local servers")


def load_payloads(data_dir: Path, results_name: str, limit: int) -> list[tuple[str, bytes, str]]:
    """(file name, image bytes, instances JSON) per image of a COCO results file, in image order."""
    info = json.loads((data_dir / "gt.json").read_text())
    results = json.loads((data_dir / results_name).read_text())
    by_image: dict[Any, list[dict]] = {}
    for entry in results:
        by_image.setdefault(entry["image_id"], []).append(entry)
    payloads = []
    for img in info["images"]:
        if img["id"] in by_image:
            data = (data_dir / "images" / img["file_name"]).read_bytes()
            payloads.append((img["file_name"], data, json.dumps(by_image[img["id"]])))
        if len(payloads) >= limit:
            break
    if not payloads:
        raise SystemExit(f"loadtest: no images with results in {data_dir}")
    return payloads


def scrape(url: str) -> dict[str, float]:
    """The few /metrics samples the report needs."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    wanted = (
        "bpr_patches_total",
        "bpr_instances_total",
        "bpr_batch_patches_sum",
        "bpr_batch_patches_count",
        "bpr_batch_requests_sum",
        "bpr_batch_requests_count",
    )
    out = {}
    for line in text.splitlines():
        m = re.match(r"([a-z_]+)(?:\{\})? (\S+)$", line)
        if m and m.group(1) in wanted:
            out[m.group(1)] = float(m.group(2))
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def run_clients(
    url: str,
    payloads: list[tuple[str, bytes, str]],
    endpoint: str,
    clients: int,
    requests: int,
    duration: float,
    api_key: str | None,
) -> tuple[list[float], Counter, float]:
    latencies: list[float] = []
    statuses: Counter = Counter()
    next_index = 0
    deadline = time.monotonic() + duration
    headers = {"X-API-Key": api_key} if api_key else {}

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests and time.monotonic() < deadline:
            name, image, instances = payloads[next_index % len(payloads)]
            next_index += 1
            files = {"image": (name, image, "image/jpeg")}
            data = {"instances": instances} if endpoint == "refine" else None
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/{endpoint}", files=files, data=data, headers=headers)
                status = str(r.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if status == "200":
                latencies.append(time.perf_counter() - t0)
            statuses[status] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=max(60.0, duration), limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, statuses, time.perf_counter() - start


def spawn_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """bpr-serve on 127.0.0.1 with a free port; returns the process and its URL once it listens."""
    cmd = [str(Path(sys.executable).with_name("bpr-serve")), "--host", "127.0.0.1", "--port", "0"]
    if args.checkpoint:
        cmd += ["--checkpoint", str(args.checkpoint)]
    env = {**os.environ}
    for key, value in (("BPR_MAX_WAIT_MS", args.max_wait_ms), ("BPR_MAX_BATCH_SIZE", args.max_batch_size)):
        if value is not None:
            env[key] = str(value)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if m:  # keep reading its log (access lines) so the pipe never fills and blocks it
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
    proc.wait()
    raise SystemExit("loadtest: bpr-serve did not start:\n" + "".join(lines[-20:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server on this machine, e.g. http://127.0.0.1:8000")
    where.add_argument("--spawn", action="store_true", help="start bpr-serve for the run (and stop it after)")
    p.add_argument("--checkpoint", type=Path, help="with --spawn: the refiner checkpoint")
    p.add_argument("--max-wait-ms", type=float, help="with --spawn: BPR_MAX_WAIT_MS")
    p.add_argument("--max-batch-size", type=int, help="with --spawn: BPR_MAX_BATCH_SIZE")
    p.add_argument("--data", type=Path, default=DEFAULT_SET, help="a data set folder (images/, gt.json, results)")
    p.add_argument("--results", default="osvos.json", help="results file in --data giving the instances")
    p.add_argument("--images", type=int, default=32, help="distinct images to cycle through")
    p.add_argument("--endpoint", choices=["refine", "segment"], default="refine")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--requests", type=int, default=200, help="stop after this many requests")
    p.add_argument("--duration", type=float, default=120.0, help="... or after this many seconds")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests first (model and allocator warm-up)")
    p.add_argument("--api-key", default=os.environ.get("BPR_API_KEY"))
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or args.duration <= 0:
        raise SystemExit("loadtest: --requests, --clients and --duration must be positive")

    payloads = load_payloads(args.data, args.results, args.images)
    proc = None
    if args.spawn:
        proc, url = spawn_server(args)
    else:
        url = args.url.rstrip("/")
    try:
        check_loopback(url)
        if args.warmup:
            asyncio.run(run_clients(url, payloads, args.endpoint, 1, args.warmup, 60, args.api_key))
        before = scrape(url)
        latencies, statuses, elapsed = asyncio.run(
            run_clients(url, payloads, args.endpoint, args.clients, args.requests, args.duration, args.api_key)
        )
        after = scrape(url)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    ok = statuses.get("200", 0)
    report = {
        "url": url,
        "endpoint": args.endpoint,
        "clients": args.clients,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(ok / elapsed, 2),
        "instances_per_s": round(delta.get("bpr_instances_total", 0) / elapsed, 1),
        "patches_per_s": round(delta.get("bpr_patches_total", 0) / elapsed, 1),
        "mean_batch_patches": round(
            delta.get("bpr_batch_patches_sum", 0) / max(delta.get("bpr_batch_patches_count", 0), 1), 1
        ),
        "mean_requests_per_batch": round(
            delta.get("bpr_batch_requests_sum", 0) / max(delta.get("bpr_batch_requests_count", 0), 1), 2
        ),
        "latency_ms": {
            q: round(1000 * percentile(latencies, v), 1)
            for q, v in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        },
    }
    lat = report["latency_ms"]
    print(
        f"{report['clients']:>3} clients  {report['requests']} requests in {report['seconds']} s  "
        f"statuses {report['statuses']}\n"
        f"    {report['requests_per_s']} req/s  {report['instances_per_s']} instances/s  "
        f"{report['patches_per_s']} patches/s  "
        f"batch {report['mean_batch_patches']} patches / {report['mean_requests_per_batch']} requests\n"
        f"    latency p50 {lat['p50']} ms  p95 {lat['p95']} ms  p99 {lat['p99']} ms  max {lat['max']} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
