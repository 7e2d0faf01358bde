"""Run a Python snippet in a fresh process and report its wall time and peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# VmHWM, not getrusage: after fork+exec ru_maxrss can still hold the parent's peak.
_FOOTER = """
import json as _json, sys as _sys, time as _time
_seconds = _time.perf_counter() - _t0
_hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
_result = {"seconds": _seconds, "peak_mb": int(_hwm) / 1024, **globals().get("_extra", {})}
_sys.stdout.write("\\n@@" + _json.dumps(_result) + "\\n")
"""


def measure(code: str) -> dict[str, float]:
    """Wall seconds (of ``code`` alone, imports before it excluded) and peak RSS in MB,
    with the entries of a dict ``_extra`` that ``code`` leaves, if any."""
    script = "import time as _time\n" + textwrap.dedent(code).replace(
        "# --- start ---", "_t0 = _time.perf_counter()"
    )
    if "_t0 =" not in script:
        script = "import time as _time\n_t0 = _time.perf_counter()\n" + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script + _FOOTER], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{result.stderr[-3000:]}")
    line = [x for x in result.stdout.splitlines() if x.startswith("@@")][-1]
    return json.loads(line[2:])
