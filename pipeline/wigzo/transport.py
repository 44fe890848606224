"""The one seam where delivery touches the network: send one prepared Wigzo call, get an answer or a TransportError.

`RequestsTransport` is the only code that imports `requests`. Every failure to get an HTTP answer leaves it as
a `TransportError` saying whether trying again can help, so the delivery policy classifies failures without
knowing the HTTP library, and tests hand `WigzoClient` a scripted `Transport` instead of a patched Session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from pipeline import __version__

USER_AGENT = f"segment-wigzo/{__version__} python-requests/{requests.__version__}"


@dataclass(frozen=True, slots=True)
class Response:
    """Wigzo's answer: the status, the headers (Retry-After), and the body, decoded only when someone reads it
    (as the charset it declares, else UTF-8: a snippet for a log line is not worth guessing for)."""

    status: int
    headers: Mapping[str, str]
    content: bytes = b""
    encoding: str | None = None  # the charset the answer declared, if any

    @property
    def text(self) -> str:
        try:
            return self.content.decode(self.encoding or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")


class TransportError(Exception):
    """No HTTP answer arrived. `transient`: the network or Wigzo had trouble (try again); otherwise the call
    cannot even be built or sent as it is (never retry). `label` names the cause in one word for histories."""

    def __init__(self, label: str, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.label = label
        self.message = message
        self.transient = transient


class Transport(Protocol):
    def send(self, method: str, url: str, *, params: Sequence[tuple[str, str]], body: bytes,
             headers: Mapping[str, str], timeout: tuple[float, float]) -> Response:
        """Send one call without following redirects; raise TransportError when no answer arrives."""
        ...


# requests wraps urllib3's and the socket's errors in these when the network, not the request, is at fault
_TRANSIENT = (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError)


def as_transport_error(exc: OSError) -> TransportError:
    """Network trouble is transient; a request that cannot even be built (invalid URL or header) never will be."""
    # requests' own exceptions are OSErrors too: any other RequestException is about the request itself,
    # and a bare OSError comes from the socket layer
    transient = isinstance(exc, _TRANSIENT) or not isinstance(exc, requests.RequestException)
    return TransportError(type(exc).__name__, str(exc), transient=transient)


class _PoolKeyCachingAdapter(HTTPAdapter):
    """An HTTPAdapter that works out each origin's connection-pool key once: requests does it on every call,
    with a filesystem check of the CA bundle path, and with dozens of threads each such system call hands the
    GIL to another thread and waits to get it back."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys: dict[tuple[str, str, Any, Any], tuple[dict[str, Any], dict[str, Any]]] = {}

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest, verify: bool | str,
                                             cert: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        parts = urlsplit(cast(str, request.url))
        key = (parts.scheme, parts.netloc, verify, cert)
        if key not in self._keys:  # a race computes the same value twice, harmlessly
            self._keys[key] = super().build_connection_pool_key_attributes(request, verify, cert)
        host_params, pool_kwargs = self._keys[key]
        return dict(host_params), dict(pool_kwargs)


class RequestsTransport:
    """One pooled `requests` adapter, shared by the consumer's worker threads.

    Each call is prepared on its own (requests' default headers and our User-Agent; no session: a session
    would look for a ~/.netrc on every call) and sent straight through the adapter: what `Session.send` adds
    on top is unwanted here (following redirects, a cookie jar shared by threads, hooks). The URL with its
    query, and the environment settings `Session.request` re-reads on every call (proxies, NO_PROXY,
    REQUESTS_CA_BUNDLE), are worked out once per route instead: parsing and re-encoding the same URL was a
    tenth of the pipeline's Python time. A running consumer's environment does not change.
    """

    def __init__(self, pool_size: int, ca_bundle: str) -> None:
        """`ca_bundle` is WIGZO_CA_BUNDLE's value; empty trusts the system's CA store (or REQUESTS_CA_BUNDLE)."""
        session = requests.Session()  # for merge_environment_settings: proxies, CA bundle as requests reads them
        # requests' default pool keeps 10 connections per host and discards the rest after each use. Not
        # blocking: a request beyond pool_size (the client lets more out while some hang) opens a connection
        # of its own at once instead of waiting for a pooled one; the pool keeps pool_size of them afterwards.
        self._adapter = _PoolKeyCachingAdapter(pool_maxsize=pool_size, pool_block=False, max_retries=0)
        session.verify = ca_bundle or True
        self._session = session
        self._headers = {**requests.utils.default_headers(), "User-Agent": USER_AGENT}
        self._routes: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, dict[str, Any]]] = {}

    def send(self, method: str, url: str, *, params: Sequence[tuple[str, str]], body: bytes,
             headers: Mapping[str, str], timeout: tuple[float, float]) -> Response:
        try:
            target, environment = self._route(url, params)
            prepared = requests.PreparedRequest()  # what Request.prepare builds, minus cookies, auth and hooks
            prepared.prepare_method(method)
            prepared.url = target
            prepared.prepare_headers({**self._headers, **headers})
            prepared.prepare_body(body, None)
            answer = self._adapter.send(prepared, timeout=timeout, **environment)
            content = answer.content  # read here: a body cut off is network trouble like any other
        except OSError as exc:
            raise as_transport_error(exc) from exc
        return Response(answer.status_code, answer.headers, content, answer.encoding)

    def _route(self, url: str, params: Sequence[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
        """The full URL as requests prepares it, and `Session.merge_environment_settings` for it (proxies,
        NO_PROXY, CA bundle): both once per route, not per call. A pipeline calls two routes with fixed
        parameters (its tokens), so this stays as small as that; a URL requests cannot build raises every time."""
        key = (url, tuple(params))
        route = self._routes.get(key)
        if route is None:  # a race computes the same value twice, harmlessly
            prepared = requests.PreparedRequest()
            prepared.prepare_url(url, params)
            target = cast(str, prepared.url)
            # verify=the session's own: with None, REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE would override WIGZO_CA_BUNDLE
            route = self._routes[key] = (target, self._session.merge_environment_settings(
                target, {}, None, self._session.verify, None))
        return route

    def close(self) -> None:
        self._adapter.close()
        self._session.close()
