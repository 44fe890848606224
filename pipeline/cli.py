"""`wigzo-pipeline`: one console script, one subcommand per job.

Each subcommand is a module with `add_arguments(parser)` and `main(args)`. Only the chosen command's
module is imported, so `run` in production never loads the development tooling (sandbox, local Kafka, local
schema registry, samples, demo). This file wires them together and turns user errors into messages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.model import PipelineError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pipeline.ops.run", "consume Segment events and deliver them to Wigzo"),
    "transform": ("pipeline.ops.dry_run", "dry run: map Segment JSON lines to the Wigzo requests they would become"),
    "replay": ("pipeline.ops.replay",
               "reprocess a range of a topic (by time or offsets) without touching the live group"),
    "reset-offsets": ("pipeline.ops.reset_offsets", "move the live group's committed offsets (group must be inactive)"),
    "redrive": ("pipeline.ops.redrive", "reprocess dead letters through the current code and configuration"),
    "check": ("pipeline.ops.check", "read-only readiness check of configuration, Kafka, topics, group and Wigzo"),
    "dlq": ("pipeline.ops.inspect_dlq", "summarize or show the dead letters in the dead-letter topic (read-only)"),
    "sandbox": ("pipeline.dev.sandbox.command", "serve the Wigzo sandbox (a local stand-in for Wigzo)"),
    "kafka": ("pipeline.dev.local_kafka", "start, stop or check the project's local Kafka"),
    "registry": ("pipeline.dev.local_registry",
                 "start, stop or check the project's local schema registry (Apicurio, Confluent-compatible)"),
    "demo": ("pipeline.dev.demo", "run the whole pipeline on local Kafka + sandbox + sample events, and report"),
    "produce-sample": ("pipeline.dev.produce_sample", "produce the seeded sample event stream to a topic on any Kafka"),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """Every subcommand is listed; only `command`'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="wigzo-pipeline", description="Deliver Segment events from Kafka to the Wigzo marketing API.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(handler=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.handler(args))
    except PipelineError as exc:
        print(f"wigzo-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `wigzo-pipeline transform | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
