"""The Wigzo sandbox: a real HTTP server on loopback that stands in for Wigzo in tests, the demo and benchmarks.

- `wigzo_rules`: Wigzo's routes and checks, the faults to inject and the state the control API reports
  (pure: no sockets);
- `server`: `SandboxServer`, the HTTP(S) server in front of them, on a background thread;
- `control`: `SandboxControl`, the client that sets faults and reads what was received, from any process;
- `command`: `wigzo-pipeline sandbox` and `python -m pipeline.dev.sandbox`.
"""

from pipeline.dev.sandbox.control import SandboxControl
from pipeline.dev.sandbox.server import SandboxServer
from pipeline.dev.sandbox.wigzo_rules import Faults, SandboxError

__all__ = ["Faults", "SandboxControl", "SandboxError", "SandboxServer"]
