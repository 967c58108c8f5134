"""`make bench`: run every benchmarks/bench_*.py in turn and print each one's figure (the last
line it prints, `name: value`), then a summary table. Any extra arguments select benchmarks by
substring, e.g. `python benchmarks/run_all.py loader checkpoint`."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(selected: list[str]) -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(p for p in here.glob("bench_*.py")
                     if not selected or any(s in p.stem for s in selected))
    figures, failed = [], []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(script)], cwd=here.parent, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(proc.stdout, end="", flush=True)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode or not lines:
            failed.append(script.name)
            continue
        figures.append((lines[-1], time.monotonic() - started))
    print("\n== figures")
    for figure, seconds in figures:
        print(f"{figure}    ({seconds:.0f}s)")
    for name in failed:
        print(f"{name}: FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
