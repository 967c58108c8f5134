"""A kernel's shell steps, run through delegator.py with their output streamed live.

delegator's blocking mode returns output only when a command ends, which would leave a
12-hour training silent in the kernel log (and lose it all if the session is killed), so
steps run in its pexpect mode with every byte echoed as it arrives."""
from __future__ import annotations

import shlex
import sys

import delegator
import pexpect


def run_step(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> int:
    """Run argv, echo its output (stderr merged) live, return its exit status."""
    print(f"$ {shlex.join(argv)}", flush=True)
    command = delegator.run(argv, block=False, env=env, cwd=cwd)
    command.subprocess.logfile_read = _Echo()
    command.subprocess.expect(pexpect.EOF, timeout=None)
    command.block()
    status = command.return_code
    return status if status is not None else 128 + (command.subprocess.signalstatus or 0)


class _Echo:
    """pexpect's log sink: writes to our stdout as soon as bytes arrive."""

    def write(self, text: str) -> None:
        sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()
