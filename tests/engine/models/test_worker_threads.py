"""A thread done with PyTorch gives its OpenMP workers back (engine/models/openmp.py): left
alive, a second thread's team made a 2-vCPU server's steps up to 2.3x slower."""

import os
import threading
import time

import pytest
import torch

from qwen_tts_api.engine.models import openmp


def threads_of_this_process() -> set[str]:
    return set(os.listdir("/proc/self/task"))


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or openmp._pause_host() is None or torch.get_num_threads() < 2,
    reason="needs Linux, PyTorch's GNU OpenMP and more than one PyTorch thread",
)
def test_a_thread_gives_its_openmp_workers_back():
    seen: dict[str, set[str]] = {}  # the process's thread ids at each moment

    def work() -> None:
        seen["before"] = threads_of_this_process()
        torch.ones(4_000_000).mul_(2)  # large enough to run in parallel: this thread's own team
        seen["working"] = threads_of_this_process()
        openmp.release_worker_threads()
        # The freed workers exit on their own time: on a loaded machine not at once.
        deadline = time.monotonic() + 5
        while (seen["working"] - seen["before"]) <= threads_of_this_process() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["released"] = threads_of_this_process()
        torch.ones(4_000_000).mul_(2)  # and PyTorch still works in parallel afterwards
        seen["again"] = threads_of_this_process()
        openmp.release_worker_threads()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    # By thread id, not by count: other tests' servers may start or end threads meanwhile,
    # which can only add ids to these differences, never take the workers' away.
    started = seen["working"] - seen["before"]
    assert started, "the parallel operator started workers"
    assert started - seen["released"], "and they were given back"
    assert seen["again"] - seen["released"], "and new ones start for the next parallel operator"
