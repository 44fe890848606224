"""`wigzo-pipeline`: one console script, one subcommand per job.

Each subcommand lives in its own module, which exposes an `add_arguments(parser)` and a `main(args)`
(or the names given below); this file only wires them together and turns user errors into messages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.model import PipelineError

# subcommand -> (module, add-arguments function, main function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "run": ("pipeline.kafka.pipeline", "add_arguments", "main", "consume Segment events and deliver them to Wigzo"),
    "transform": ("pipeline.ops.dry_run", "add_arguments", "main",
                  "dry run: map Segment JSON lines to the Wigzo requests they would become"),
    "sandbox": ("pipeline.dev.sandbox", "add_arguments", "main", "serve the Wigzo sandbox (a local stand-in for Wigzo)"),
    "kafka": ("pipeline.dev.local_kafka", "add_arguments", "main", "start, stop or check the project's local Kafka"),
    "demo": ("pipeline.dev.demo", "add_arguments", "main",
             "run the whole pipeline on local Kafka + sandbox + sample events, and report"),
    "replay": ("pipeline.ops.replay", "add_replay_arguments", "replay_main",
               "reprocess a range of a topic (by time or offsets) without touching the live group"),
    "reset-offsets": ("pipeline.ops.replay", "add_reset_arguments", "reset_main",
                      "move the live group's committed offsets (group must be inactive)"),
    "redrive": ("pipeline.ops.replay", "add_redrive_arguments", "redrive_main",
                "reprocess dead letters through the current code and configuration"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wigzo-pipeline", description="Deliver Segment events from Kafka to the Wigzo marketing API.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, add_name, main_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        getattr(module, add_name)(sub)
        sub.set_defaults(handler=getattr(module, main_name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
