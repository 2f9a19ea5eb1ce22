"""Peak resident memory of this process, for the benches' child processes.

``getrusage(RUSAGE_SELF).ru_maxrss`` (and what ``wait4`` reports for a child) is not
this process's own peak on Linux: the high-water mark carries over fork and exec, so a
child started by a parent holding 6 GB reports at least 6 GB however little it uses.
``VmHWM`` in /proc/self/status is the peak of the process's own address space since its
exec. No imports beyond the standard library: FuxiCTR's venv runs this too.
"""
from __future__ import annotations

import resource

__all__ = ["peak_rss_mb"]


def peak_rss_mb() -> float:
    """This process's peak RSS in MB since its exec (ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB; a floor elsewhere
