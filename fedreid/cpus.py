"""How many CPU cores this process may run on (its affinity, not the machine's count)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """Cores in this process's affinity mask (a container or ``taskset`` limits it), else
    the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
