"""CPU memory allocator tuning for the hot loop (glibc malloc; Linux only).

``bscrit measure`` allocates and frees gradient-sized buffers every batch; glibc returns large
freed blocks to the system and page-faults them back in, which costs up to ~15% of a step on CPU
(docs/performance.md). :func:`tune_cpu_allocator` raises the mmap and trim thresholds once.
"""

from __future__ import annotations

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
