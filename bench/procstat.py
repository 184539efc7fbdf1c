"""CPU time and memory of other processes, read from /proc (Linux only).

Two sources, read together so one can check the other:

* ``/proc/<pid>/task/<tid>/schedstat``: nanoseconds each thread spent on a
  CPU. Exact, and the figure the bench reports.
* ``/proc/<pid>/stat`` utime+stime: the same time in clock ticks (usually
  10 ms), sampled by the kernel. Coarse, but independent of schedstat.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CPUTime:
    """Seconds on a CPU since the process started, all threads."""

    scheduled: float  # schedstat
    ticks: float  # utime + stime

    def __sub__(self, earlier: CPUTime) -> CPUTime:
        return CPUTime(self.scheduled - earlier.scheduled, self.ticks - earlier.ticks)


def cpu_time(pid: int) -> CPUTime:
    """``pid``'s CPU time so far; zero once the process is gone."""
    run_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    run_ns += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass  # a thread that just ended; its time is in /proc/<pid>/stat
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the command name may contain spaces
        ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    except (FileNotFoundError, ProcessLookupError):
        return CPUTime(0.0, 0.0)
    return CPUTime(run_ns / 1e9, ticks / _TICKS_PER_SECOND)


def cpu_model() -> str:
    """The CPU's model name, for the report's heading."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def rss_bytes(pid: int) -> int:
    """``pid``'s resident memory now (VmRSS); zero once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0
