"""A thread done with PyTorch gives its OpenMP workers back (engine/models/openmp.py): left
alive, a second thread's team made a 2-vCPU server's steps up to 2.3x slower."""

import os
import threading

import pytest
import torch

from qwen_tts_api.engine.models import openmp


def threads_of_this_process() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or openmp._pause_host() is None or torch.get_num_threads() < 2,
    reason="needs Linux, PyTorch's GNU OpenMP and more than one PyTorch thread",
)
def test_a_thread_gives_its_openmp_workers_back():
    counts: dict[str, int] = {}

    def work() -> None:
        counts["before"] = threads_of_this_process()
        torch.ones(4_000_000).mul_(2)  # large enough to run in parallel: this thread's own team
        counts["working"] = threads_of_this_process()
        openmp.release_worker_threads()
        counts["released"] = threads_of_this_process()
        torch.ones(4_000_000).mul_(2)  # and PyTorch still works in parallel afterwards
        counts["again"] = threads_of_this_process()
        openmp.release_worker_threads()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    # Compared by order, not equality: other tests' servers may start or end a thread meanwhile.
    assert counts["working"] > counts["before"], "the parallel operator started workers"
    assert counts["released"] < counts["working"], "and they were given back"
    assert counts["again"] > counts["released"]
