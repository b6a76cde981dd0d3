"""`bench/micro.py --smoke` runs: the micro-benchmarks still import and call today's APIs.

Only that it runs and prints its table; no timing is asserted (benchmarks are not tests).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MICRO = Path(__file__).resolve().parent.parent / "bench" / "micro.py"


def test_micro_smoke_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(MICRO), "--smoke"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "| micro-benchmark | ops/s | ns/op |" in done.stdout
    assert "lb: ROUND_ROBIN choose_host, 1,000 hosts" in done.stdout
