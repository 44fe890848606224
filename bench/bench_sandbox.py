"""How many requests per second the Wigzo sandbox answers, so benchmarks know it is not their bottleneck.

Starts the sandbox (`python -m pipeline.dev.sandbox`) as its own process on 127.0.0.1 (zero latency, no faults), then drives
it from separate client processes over keep-alive connections with valid identify requests, each with
its own Idempotency-Key. Bounded by --duration and --max-requests.

    .venv/bin/python bench/bench_sandbox.py                      # raw keep-alive sockets: the server's ceiling
    .venv/bin/python bench/bench_sandbox.py --client requests    # a requests.Session per thread, as the pipeline

The raw client is a few lines of socket code so that the client costs less CPU than the server; the
requests client shows what a real Python caller sees (on 2 cores it is the bottleneck, not the sandbox).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import requests

ORG_TOKEN = "bench-org-token"
PATH = f"/rest/v1/learn/identify?org_token={ORG_TOKEN}"
BODY = b'{"userId":"bench-user","email":"bench@example.com"}'


def _raw_worker(host: str, port: int, deadline: float, quota: int, worker: int) -> int:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done = 0
    buffer = b""
    while done < quota and time.monotonic() < deadline:
        request = (f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"Idempotency-Key: bench-{worker}-{done}\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY
        sock.sendall(request)
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += sock.recv(65536)
        head = buffer[:end].decode("latin-1")
        if not head.startswith("HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer: {head.splitlines()[0]}")
        length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
        while len(buffer) < end + 4 + length:
            buffer += sock.recv(65536)
        buffer = buffer[end + 4 + length:]
        done += 1
    sock.close()
    return done


def _requests_worker(url: str, deadline: float, quota: int, worker: int) -> int:
    session = requests.Session()
    done = 0
    while done < quota and time.monotonic() < deadline:
        response = session.post(url + PATH, data=BODY, timeout=10,
                                headers={"Content-Type": "application/json", "Idempotency-Key": f"bench-{worker}-{done}"})
        if response.status_code != 200:
            raise RuntimeError(f"unexpected answer: {response.status_code} {response.text[:200]}")
        done += 1
    return done


def _client_process(mode: str, url: str, threads: int, duration: float, quota: int, process: int) -> int:
    """One client process: `threads` keep-alive connections, each its own share of the quota."""
    deadline = time.monotonic() + duration
    split = urlsplit(url)
    counts = [0] * threads

    def run(index: int) -> None:
        worker = process * threads + index
        if mode == "raw":
            counts[index] = _raw_worker(split.hostname or "127.0.0.1", split.port or 80, deadline, quota, worker)
        else:
            counts[index] = _requests_worker(url, deadline, quota, worker)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=("raw", "requests"), default="raw")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--threads", type=int, default=8, help="keep-alive connections per client process")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (upper bound)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="requests in total (upper bound)")
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.dev.sandbox", "--host", "127.0.0.1", "--port", "0", "--org-token", ORG_TOKEN],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the sandbox did not start (printed {url!r})")
        connections = args.processes * args.threads
        quota = max(1, args.max_requests // connections)
        started = time.monotonic()
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            totals = pool.starmap(_client_process, [(args.client, url, args.threads, args.duration, quota, p)
                                                    for p in range(args.processes)])
        elapsed = time.monotonic() - started
        total = sum(totals)
        accepted = requests.get(url + "/_sandbox/count", timeout=10).json()["count"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"client={args.client} processes={args.processes} connections={connections} cores={os.cpu_count()} "
          f"requests={total} accepted={accepted} seconds={elapsed:.2f} -> {total / elapsed:,.0f} req/s")
    return 0 if accepted == total else 1


if __name__ == "__main__":
    sys.exit(main())
