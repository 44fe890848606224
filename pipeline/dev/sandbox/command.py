"""`wigzo-pipeline sandbox` (and `python -m pipeline.dev.sandbox`): serve the sandbox until SIGINT or SIGTERM,
with faults and TLS from the command line."""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import threading
from dataclasses import fields
from typing import Any

from pipeline.config import Settings
from pipeline.dev.sandbox.server import SandboxServer
from pipeline.dev.sandbox.wigzo_rules import Faults, SandboxError
from pipeline.telemetry.logs import configure_logging


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    parser.add_argument("--org-token", default=None,
                        help="the org_token to require; several, comma-separated, stand for several Wigzo "
                             "organizations [env WIGZO_ORG_TOKEN]")
    parser.add_argument("--api-token", default=None, help="the token to require, if any [env WIGZO_API_TOKEN]")
    for fault in fields(Faults):  # a flag for every fault, unset unless given
        flag, help_text = f"--{fault.name.replace('_', '-')}", fault.metadata["help"]
        if isinstance(fault.default, bool):
            parser.add_argument(flag, dest=fault.name, action="store_true", default=None, help=help_text)
        elif isinstance(fault.default, tuple):
            parser.add_argument(flag, dest=fault.name, type=_names, default=None, metavar="NAME,...", help=help_text)
        else:
            parser.add_argument(flag, dest=fault.name, type=type(fault.default), default=None, help=help_text)
    parser.add_argument("--tls-cert", default=None, metavar="FILE", help="serve HTTPS with this PEM certificate "
                        "(chain); needs --tls-key")
    parser.add_argument("--tls-key", default=None, metavar="FILE", help="the PEM private key for --tls-cert")


def _ssl_context_from(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side TLS context for the sandbox from PEM files, or a SandboxError saying what is wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except OSError as exc:  # a missing file, or ssl.SSLError: not PEM, or a key that does not match
        raise SandboxError(f"cannot serve HTTPS with --tls-cert {cert_file} --tls-key {key_file}: {exc}") from None
    return context


def main(args: argparse.Namespace) -> int:
    org_tokens = _names(args.org_token or os.environ.get("WIGZO_ORG_TOKEN", ""))
    api_token = args.api_token or os.environ.get("WIGZO_API_TOKEN") or None
    changes: dict[str, Any] = {fault.name: getattr(args, fault.name) for fault in fields(Faults)
                               if getattr(args, fault.name) is not None}
    try:
        faults = Faults().updated(changes)
    except ValueError as exc:
        raise SandboxError(str(exc)) from None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SandboxError("pass both --tls-cert and --tls-key to serve HTTPS, or neither for HTTP")
    ssl_context = _ssl_context_from(args.tls_cert, args.tls_key) if args.tls_cert else None
    defaults = Settings()
    configure_logging(defaults.log_level, defaults.log_format)  # the pipeline's format, for its few lines
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    server = SandboxServer(host=args.host, port=args.port, org_token=org_tokens, api_token=api_token,
                           faults=faults, ssl_context=ssl_context).start()
    print(server.url, flush=True)
    while not stopped.wait(0.5):
        pass
    server.stop()
    return 0
