"""release_thread_pool frees the OpenMP workers of the calling thread (kamado/kernels/openmp.py says why)."""

import os
import threading

import pytest
import torch

from kamado.kernels import openmp

pytestmark = pytest.mark.skipif(openmp._pause() is None, reason="torch does not use libgomp here (not Linux or another runtime)")


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def _parallel_work() -> None:
    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    for _ in range(3):
        a @ a  # large enough that torch runs it as an OpenMP parallel region


def test_release_frees_only_the_calling_threads_workers():
    counts = {}
    release = threading.Event()

    def other_thread():
        _parallel_work()
        counts["other computed"] = _thread_count()
        release.wait()

    before = _thread_count()
    _parallel_work()
    counts["main computed"] = _thread_count()
    worker = threading.Thread(target=other_thread)
    worker.start()
    while "other computed" not in counts:
        worker.join(0.01)
    openmp.release_thread_pool()  # main's workers go; the other thread's stay
    counts["main released"] = _thread_count()
    release.set()
    worker.join()
    if counts["main computed"] == before:
        pytest.skip("torch ran the product without a second OpenMP thread (one core available)")
    assert counts["other computed"] > counts["main computed"]  # the worker thread and its own OpenMP worker
    assert counts["main released"] == counts["other computed"] - 1
    _parallel_work()  # main can compute again afterwards

