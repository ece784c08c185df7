"""Give back a thread's OpenMP workers once it stops computing, so the engine's thread keeps its speed.

torch's CPU kernels parallelize with OpenMP (libgomp on Linux), whose worker threads belong to the thread
that started a parallel region and stay alive after it. Once more libgomp threads exist than cores (the main
thread loaded the model, the engine's worker thread decodes), libgomp stops spin-waiting between parallel
regions and puts its workers to sleep instead; every small product then pays a futex wake-up. On the 2-core
machine that took Gemma 3 270M decode from 38-39 to 26-27 tokens/s. A thread that hands its work to the engine
(or finished loading a model) therefore calls `release_thread_pool()`: libgomp's omp_pause_resource_all frees
the calling thread's pool only, and a later parallel region on that thread simply creates a new one.
"""

from __future__ import annotations

import ctypes
import functools
import sys

_OMP_PAUSE_SOFT = 1


@functools.cache
def _pause():
    """omp_pause_resource_all of the OpenMP runtime torch's kernels use, or None (not Linux, no libgomp)."""
    if not sys.platform.startswith("linux"):
        return None
    import torch  # noqa: F401  (loads libtorch_cpu and its OpenMP runtime)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libtorch_cpu" in line}
        # Looked up through libtorch_cpu's own dependencies: other wheels load their own libgomp copies.
        torch_cpu = ctypes.CDLL(paths.pop())
        torch_cpu.GOMP_parallel  # libgomp only: LLVM's libomp pauses every thread's workers at once  # noqa: B018
        return torch_cpu.omp_pause_resource_all
    except (OSError, AttributeError, KeyError):
        return None


def release_thread_pool() -> None:
    """Free the OpenMP worker threads the calling thread started (a no-op where there are none)."""
    pause = _pause()
    if pause is not None:
        pause(_OMP_PAUSE_SOFT)
