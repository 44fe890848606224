"""The client of the sandbox's control API, for tests, the demo and other processes."""

from __future__ import annotations

from typing import Any

import orjson
import requests

from pipeline.dev.sandbox.wigzo_rules import SandboxError


class SandboxControl:
    """Client of the control API, for tests, the demo and other processes. `ca_bundle` trusts the certificate
    of a sandbox serving HTTPS."""

    def __init__(self, url: str, *, ca_bundle: str | None = None) -> None:
        self._url = url.rstrip("/") + "/_sandbox"
        self._session = requests.Session()
        self._verify: str | bool = ca_bundle or True  # per call: REQUESTS_CA_BUNDLE would override Session.verify

    def _call(self, method: str, route: str, payload: dict[str, Any] | None = None) -> Any:
        response = self._session.request(method, f"{self._url}/{route}",
                                         data=orjson.dumps(payload) if payload else None, timeout=10,
                                         verify=self._verify)
        answer = orjson.loads(response.content)
        if response.status_code != 200:
            raise SandboxError(f"sandbox {route}: {answer.get('error', response.text)}")
        return answer

    def received(self) -> list[dict[str, Any]]:
        return self._call("GET", "requests")["requests"]

    def count(self) -> int:
        return self._call("GET", "count")["count"]

    def duplicates(self) -> dict[str, int]:
        return self._call("GET", "duplicates")["duplicates"]

    def attempts(self) -> list[dict[str, Any]]:
        return self._call("GET", "attempts")["attempts"]

    def retry_after_violations(self) -> list[dict[str, Any]]:
        """Requests that came back for their key before the Retry-After of its last 429 allowed."""
        return self._call("GET", "violations")["violations"]

    def stats(self) -> dict[str, int]:
        return self._call("GET", "stats")

    def faults(self) -> dict[str, Any]:
        return self._call("GET", "faults")

    def reset(self) -> None:
        self._call("POST", "reset")

    def org_tokens(self) -> list[str]:
        return self._call("GET", "tokens")["org_tokens"]

    def set_org_tokens(self, *tokens: str) -> None:
        """Accept these org tokens instead (a rotation in Wigzo); `reset` restores those it started with."""
        self._call("POST", "tokens", {"org_tokens": list(tokens)})

    def set_faults(self, **faults: Any) -> None:
        self._call("POST", "faults", faults)

    def close(self) -> None:
        self._session.close()
