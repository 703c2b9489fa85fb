"""Independent training runs of the audit in parallel worker processes, where the machine has the cores.

The experiment's trainings (:mod:`.experiment`: the target's runs at every privacy level, the other nodes' uploads
and the adversary's simulations of them) are independent: each starts from the same public initial state, with its
own data and its own randomness streams fixed by its randomness id and DP secret, so the order and the process they
run in do not change what they compute. :class:`RunPool` runs them:

- ``workers <= 1``: in this process, one after the other (nothing is pickled);
- ``workers >= 2``: in that many processes started with *spawn* (a fork after torch has started its threads can
  deadlock). The inputs every task shares (the context: configurations, the target's records) are sent once per
  worker; a task sends only its own arguments. Results come back in the order the tasks were given.

Every task runs with ONE torch thread (:data:`THREADS_PER_RUN`), in a worker or in this process. Torch's CPU kernels
sum in another order with another number of threads, and training amplifies the last-bit difference (Adam's
normalised steps flip with the sign of near-zero gradients): measured on the demo, a node trained with 2 threads and
the same node trained with 1 ended up as different models altogether (embeddings apart by about their own norm). With
one thread per run the experiment is the same float for float whatever ``workers`` is (measured on the demo's quick
plan; tests/audit/test_attacks.py checks it on a tiny federation), which is what lets the cache key ignore
``workers``; the parallelism is across runs, where it pays: on 2 cores two single-threaded runs at once trained the
quick plan's target runs in 50 s against 59 s for one run at a time with both cores (docs/audit.md).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any, Self

import torch

Task = Callable[..., Any]  # a module-level function f(context, *args): picklable by reference

THREADS_PER_RUN = 1  # torch threads of every training run: the floats do not depend on workers or cores
_CONTEXT: Any = None  # the worker's copy of the shared context (set once per worker by _initialise)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def resolve_workers(requested: int, tasks: int) -> int:
    """``requested`` worker processes (0 = one per available core), never more than the tasks there are."""
    wanted = available_cores() if requested == 0 else requested
    return max(1, min(wanted, tasks))


def _initialise(context: Any) -> None:
    global _CONTEXT
    torch.set_num_threads(THREADS_PER_RUN)
    _CONTEXT = context


def _in_process(fn: Task, context: Any, args: tuple[Any, ...]) -> Any:
    """``fn`` in this process with :data:`THREADS_PER_RUN` torch threads, the caller's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS_PER_RUN)
    try:
        return fn(context, *args)
    finally:
        torch.set_num_threads(threads)


def _call(fn: Task, args: tuple[Any, ...]) -> Any:
    return fn(_CONTEXT, *args)


class RunPool:
    """Runs ``fn(context, *args)`` for many argument tuples, in this process or in ``workers`` processes.

    Use as a context manager; :meth:`map` yields ``(index, result)`` as each task finishes (for progress) and
    :meth:`run` returns the results in task order. A failure in any task is raised here, with the task's own
    exception type, once the running tasks have stopped (the pool is shut down, queued tasks cancelled).
    """

    def __init__(self, context: Any, workers: int) -> None:
        self.context = context
        self.workers = max(1, workers)
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> Self:
        if self.workers >= 2:
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_initialise, initargs=(self.context,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map(self, fn: Task, tasks: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        if self._executor is None:
            for index, args in enumerate(tasks):
                yield index, _in_process(fn, self.context, args)
            return
        futures: dict[Future[Any], int] = {self._executor.submit(_call, fn, args): i for i, args in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()

    def run(self, fn: Task, tasks: Sequence[tuple[Any, ...]],
            on_done: Callable[[int, Any], None] = lambda index, result: None) -> list[Any]:
        results: list[Any] = [None] * len(tasks)
        for index, result in self.map(fn, tasks):
            results[index] = result
            on_done(index, result)
        return results
