"""`python -m pipeline.dev.sandbox`: the sandbox's command without loading the rest of `wigzo-pipeline`."""

from __future__ import annotations

import argparse
import sys

from pipeline.dev.sandbox.command import add_arguments, main
from pipeline.model import PipelineError

cli = argparse.ArgumentParser(prog="python -m pipeline.dev.sandbox", description="serve the Wigzo sandbox")
add_arguments(cli)
try:
    sys.exit(main(cli.parse_args()))
except PipelineError as exc:
    print(f"sandbox: error: {exc}", file=sys.stderr)
    sys.exit(2)
