"""Extra peak resident memory of a piece of work, from Linux's /proc (shared by the benchmarks).

``reset_peak()`` writes ``5`` to ``/proc/self/clear_refs``, which resets the peak-RSS counter
``VmHWM`` to the current RSS; ``status_kb("VmRSS")`` read right after is the baseline and
``status_kb("VmHWM")`` after the work is its peak: every page the work touched that was not
resident before, whoever allocated it.
"""

from __future__ import annotations

import os


def available() -> bool:
    """True where /proc/self/clear_refs exists (Linux)."""
    return os.path.exists("/proc/self/clear_refs")


def status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
