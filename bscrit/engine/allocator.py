"""Host memory: glibc malloc tuning for the hot loop, and how much memory there is (Linux).

``bscrit measure`` allocates and frees gradient-sized buffers every batch; glibc returns large
freed blocks to the system and page-faults them back in, which costs up to ~15% of a step on CPU
(docs/performance.md). :func:`tune_cpu_allocator` raises the mmap and trim thresholds once.

:func:`available_memory` and :func:`peak_rss` tell the planner of the group sums
(:func:`bscrit.engine.groups.plan_sums`) how much host memory a measurement may take and has taken.
"""

from __future__ import annotations

from pathlib import Path

#: Set to "0" to leave glibc's malloc settings alone (see :func:`tune_cpu_allocator`).
ENV_MALLOC_TUNING = "BSCRIT_MALLOC_TUNING"


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process (glibc): no page faults for every batch on CPU.

    With glibc's default, dynamic thresholds, the activations and gradients of each batch are
    often returned to the kernel and faulted back in on the next one (thousands of minor page
    faults per batch, ~15% of a ResNet-18 step on CPU, for a plain training loop as well as for
    a measurement). Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (to 1 GiB and 2 GiB)
    keeps that memory mapped; the resident size stays near its peak instead. Process-wide and
    permanent, so only the ``bscrit measure`` command and the benchmarks call it; opt out with
    ``BSCRIT_MALLOC_TUNING=0``. A no-op (returns False) off Linux/glibc.
    """
    import ctypes
    import os
    import sys

    if os.environ.get(ENV_MALLOC_TUNING, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        return bool(libc.mallopt(m_trim_threshold, 2 << 30) == 1 and ok)
    except (OSError, AttributeError):
        return False


def _read_kib(path: str, field: str) -> int | None:
    """``field`` of a ``/proc`` file in bytes (its lines read ``Field:   123 kB``), else None."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """What the memory limit of this process's cgroup (v2, else v1) still allows, in bytes:
    limit − usage + inactive page cache (reclaimable); None without a limit."""
    for limit, usage, stat in (
        ("memory.max", "memory.current", "memory.stat"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat"),
    ):
        base = Path("/sys/fs/cgroup")
        try:
            text = (base / limit).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:  # v1 writes "no limit" as a huge number
                return None
            cache = 0
            for line in (base / stat).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name in ("inactive_file", "total_inactive_file"):
                    cache = max(cache, int(value))
            return max(0, int(text) - int((base / usage).read_text()) + cache)
        except (OSError, ValueError):
            continue
    return None


def available_memory() -> int | None:
    """Bytes of host memory this process can still take without swapping: ``MemAvailable``,
    capped by the cgroup's limit (containers); None where neither is known (not Linux)."""
    sizes = [s for s in (_read_kib("/proc/meminfo", "MemAvailable"), _cgroup_available()) if s]
    return min(sizes) if sizes else None


def peak_rss() -> int | None:
    """The peak resident set size of this process so far, in bytes (``VmHWM``; elsewhere
    ``ru_maxrss``), None where unknown."""
    peak = _read_kib("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, else KiB
    except (ImportError, OSError):
        return None


def free_heap() -> int:
    """Bytes malloc holds free inside this process (glibc ``mallinfo2``'s ``fordblks``): memory
    a new allocation can reuse although ``MemAvailable`` no longer counts it (after an earlier
    measurement in the same process, with :func:`tune_cpu_allocator`'s thresholds); 0 where
    unknown (not glibc, or glibc older than 2.33)."""
    import ctypes

    class _Mallinfo2(ctypes.Structure):
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return 0
    mallinfo2.restype = _Mallinfo2
    return int(mallinfo2().fordblks)
