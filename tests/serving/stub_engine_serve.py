"""`raft serve` with a stand-in for the engine it launches: the fast fake OpenAI server, started through
the real launcher (its own process group) with a grandchild process beside it, so a test can check that
stopping the gateway takes the whole engine group down. Usage: python stub_engine_serve.py serve ARGS..."""

from __future__ import annotations

import shlex
import sys

import serving.launchers as launchers


def stub_command(cfg) -> list[str]:
    py = shlex.quote(sys.executable)
    return ["sh", "-c", f"sleep 600 & exec {py} -m serving.testing.fake_engine --host {cfg.engine.host} "
                        f"--port {cfg.engine.port}"]


launchers.engine_command = stub_command
launchers.check_engine_model = lambda cfg: None  # "stub-model" names no model: the stub engine needs none

if __name__ == "__main__":
    from raft.cli import main

    sys.exit(main(sys.argv[1:]))
