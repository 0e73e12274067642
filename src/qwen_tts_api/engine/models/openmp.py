"""OpenMP worker threads on a CPU: a thread that is done with PyTorch gives its own back.

Every Python thread that runs a parallel PyTorch operator gets an OpenMP team of its own,
whose worker threads live as long as that thread. GNU OpenMP (what PyTorch's Linux wheels
ship) lets idle workers spin a few milliseconds before they sleep, so that the next
operator finds them awake; but once it manages more threads than the machine has CPUs it
hardly spins at all, and every operator has to wake its workers first. A step is hundreds
of small operators, so on a 2-vCPU server a second team (the thread that loaded the models,
a decoding thread between two chunks) made a lone step markedly slower (docs/BENCHMARKS.md,
"Idle threads' OpenMP workers given back"). OpenMP 5's ``omp_pause_resource`` frees the
calling thread's team; its next parallel operator starts a new one. (``omp_pause_resource``
on the host device, not ``omp_pause_resource_all``: the latter also finalises offload devices.)
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep what is cheap to keep


@functools.cache
def _pause_host() -> Callable[[], int] | None:
    """Pauses the host's OpenMP resources through the runtime PyTorch bundles, if it can
    (GNU OpenMP in the Linux wheels; elsewhere nothing is done)."""
    import torch

    for path in sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*")):
        try:
            runtime = ctypes.CDLL(str(path))
            pause, host = runtime.omp_pause_resource, runtime.omp_get_initial_device
        except (OSError, AttributeError):
            continue
        pause.argtypes, pause.restype, host.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int, ctypes.c_int
        device = host()  # the host's device number: fixed for the process
        return lambda: pause(OMP_PAUSE_SOFT, device)
    return None


def release_worker_threads() -> None:
    """Free the calling thread's OpenMP workers (a no-op where there are none to free)."""
    pause = _pause_host()
    if pause is not None and pause() != 0:
        log.debug("omp_pause_resource refused (inside a parallel region?)")
