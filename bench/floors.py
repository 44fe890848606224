"""The floors: what the HTTP stack alone costs, the ceiling bench/pipeline_bench.py measures the pipeline against.

    python bench/floors.py {session-floor,adapter-floor,urllib3} --calls FILE --base-url URL --threads N --result FILE

Run as its own process by the benchmark. It posts the pre-prepared Wigzo calls (the pipeline's own mapping of
the same events, built before the clock starts) from N threads over one keep-alive pool, and does nothing
else: no Kafka, no decoding, no retries. It imports only the HTTP stack, so its CPU and memory are the
stack's. It writes a small JSON result (when it started posting, what it sent, what failed); the parent
measures its CPU and memory from outside (bench/measure.py) and delivery times at the sandbox.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter

TIMEOUT = (5.0, 15.0)  # connect, read: the pipeline's defaults
FLOORS = ("session-floor", "adapter-floor", "urllib3")

Send = Callable[[int], int]  # call index -> HTTP status


def _senders(kind: str, base_url: str, threads: int, calls: list[list[str]]) -> Send:
    """Everything a call needs is built here, before the clock starts; the returned function only sends."""
    prepared = [(path, body.encode(), {"Content-Type": "application/json", "Idempotency-Key": key})
                for path, body, key in calls]
    if kind == "urllib3":
        split = urlsplit(base_url)
        pool = urllib3.HTTPConnectionPool(split.hostname, split.port, maxsize=threads, block=True, retries=False,
                                          timeout=urllib3.Timeout(connect=TIMEOUT[0], read=TIMEOUT[1]))
        return lambda i: pool.urlopen("POST", prepared[i][0], body=prepared[i][1], headers=prepared[i][2],
                                      preload_content=True).status
    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=threads, max_retries=0)  # requests' default pool keeps only 10
    session.mount("http://", adapter)
    if kind == "session-floor":
        def post(i: int) -> int:
            path, body, headers = prepared[i]
            response = session.post(base_url + path, data=body, headers=headers, timeout=TIMEOUT)
            response.content  # noqa: B018 - read the answer, as the pipeline does
            return response.status_code
        return post
    requests_ready = [session.prepare_request(requests.Request("POST", base_url + path, data=body, headers=headers))
                      for path, body, headers in prepared]

    def send(i: int) -> int:
        response = adapter.send(requests_ready[i], timeout=TIMEOUT)
        response.content  # noqa: B018
        return response.status_code
    return send


def run_floor(kind: str, calls: list[list[str]], base_url: str, threads: int) -> dict[str, Any]:
    """Post every call once from `threads` threads; failures are counted, never retried."""
    send = _senders(kind, base_url, threads, calls)
    order = itertools.count()  # next() on a count is atomic under the GIL: each index goes to one thread
    failures: list[str] = []

    def work() -> None:
        while (index := next(order)) < len(calls):
            try:
                status = send(index)
            except Exception as exc:  # noqa: BLE001 - a floor reports failures, it does not handle them
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if status != 200:
                failures.append(f"HTTP {status}")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    ready_at = time.time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"ready_at": ready_at, "read": len(calls), "sent": len(calls) - len(failures), "failed": len(failures),
            "first_failure": failures[0] if failures else None, "capped": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=FLOORS)
    parser.add_argument("--calls", required=True, type=Path, help="the pre-prepared calls (JSON)")
    parser.add_argument("--base-url", required=True, help="the Wigzo sandbox")
    parser.add_argument("--threads", type=int, default=64, help="threads, and connections in the pool")
    parser.add_argument("--result", required=True, type=Path, help="where to write the JSON result")
    args = parser.parse_args()
    result = run_floor(args.kind, orjson.loads(args.calls.read_bytes()), args.base_url, args.threads)
    args.result.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
