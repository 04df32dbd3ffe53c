"""Worker processes for the independent pieces of a long run (cross-validation folds, plots): how
many to use, and running tasks on them with their results in order.

Processes, not threads: liblinear's dual solver (logistic routers on text) draws from C's one
process-wide random state, so fits side by side in threads would differ from run to run. Each
process has its own, and a task runs alone in its process, so it gives bit for bit what it gives
in the calling process. With one worker (one core, or HERD_WORKERS=1) tasks run in the calling
process, one after another, with no worker started.
"""

from __future__ import annotations

import os
import pickle
import secrets
import tempfile
import weakref
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Callable, Iterator, Sequence, TypeVar

from herd.errors import UsageError

WORKERS_ENV = "HERD_WORKERS"
# Idle workers stay this long, so the steps of one run (benchmark after benchmark, then the
# plots) share them instead of starting new ones.
IDLE_S = 300

Shared = TypeVar("Shared")
Task = TypeVar("Task")
Result = TypeVar("Result")


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_count(workers: int | None = None) -> int:
    """``workers`` checked, else $HERD_WORKERS, else one per usable core; 1 means no worker processes."""
    if workers is None:
        given = os.environ.get(WORKERS_ENV, "").strip()
        if not given:
            return usable_cores()
        try:
            workers = int(given)
        except ValueError:
            raise UsageError(f"{WORKERS_ENV}={given!r}: give a whole number of worker processes, 1 or more "
                             "(1: everything in one process)") from None
    if workers < 1:
        raise UsageError(f"{workers} worker processes: give 1 or more (1: everything in one process)")
    return workers


def run_tasks(fn: Callable[[Shared, Task], Result], tasks: Sequence[Task], shared: Shared = None, *,
              workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> Iterator[Result]:
    """``fn(shared, task)`` for every task, the results in the order of ``tasks``.

    With more than one worker every task is handed to the worker processes at once, before this
    returns, so the caller's own work overlaps theirs; ``shared`` (the data every task reads) is
    written once to a temporary file that each worker reads once, not sent with every task.
    ``fn`` must be a module-level function. The caller's HERD_* environment variables are set in
    the workers too. ``progress(done, total)`` is called as tasks finish, in whatever order they
    finish. An error in a task is raised here, when its result is reached."""
    workers = worker_count(workers)
    if workers <= 1 or not tasks:
        return _in_process(fn, tasks, shared, progress)
    return _in_workers(fn, tasks, shared, workers, progress)


def warm_up(workers: int | None = None, modules: Sequence[str] = ()) -> None:
    """Start the worker processes (when there is more than one) and import ``modules`` in them
    now, in the background, so that the first tasks do not wait for it."""
    workers = worker_count(workers)
    if workers > 1:
        executor = _executor(workers)
        for _ in range(workers):
            executor.submit(_import, tuple(modules))


def _import(modules: tuple[str, ...]) -> None:
    import importlib

    for name in modules:
        importlib.import_module(name)


def _in_process(fn, tasks, shared, progress) -> Iterator:
    for done, task in enumerate(tasks, start=1):
        result = fn(shared, task)
        if progress:
            progress(done, len(tasks))
        yield result


def _in_workers(fn, tasks, shared, workers: int, progress) -> Iterator:
    fd, path = tempfile.mkstemp(prefix="herd-shared-", suffix=".pickle")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(shared, f, protocol=pickle.HIGHEST_PROTOCOL)
        env = {k: v for k, v in os.environ.items() if k.startswith("HERD_")}
        key = (path, secrets.token_hex(8))  # a later call's file may get the same name
        executor = _executor(workers)
        futures = [executor.submit(_run_one, fn, key, env, task) for task in tasks]
    except BaseException:
        _remove(path)
        raise
    results = _collect(futures, path, progress)
    weakref.finalize(results, _remove, path)  # also when the results are never read
    return results


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _collect(futures, path: str, progress) -> Iterator:
    pending, finished = set(futures), 0

    def count_finished() -> None:
        nonlocal finished
        now = {f for f in pending if f.done()}
        if now:
            pending.difference_update(now)
            finished += len(now)
            if progress:
                progress(finished, len(futures))

    try:
        for future in futures:
            count_finished()
            while not future.done():
                wait(pending, return_when=FIRST_COMPLETED)
                count_finished()
            yield future.result()
    except GeneratorExit:  # left unread: its tasks not started yet are dropped
        for future in futures:
            future.cancel()
        raise
    except BaseException:  # an error in a task, or Ctrl-C while waiting: every task is dropped
        stop()
        raise
    finally:
        _remove(path)


_current = None  # the executor handing out tasks, if one was started


def _executor(workers: int):
    global _current
    from joblib.externals.loky import get_reusable_executor

    # Always this many workers, whatever the number of tasks: loky resizes a pool asked for
    # fewer, which waits for the tasks of calls still running. One BLAS thread per core left to
    # each worker, as joblib gives its own workers.
    threads = str(max(1, usable_cores() // workers))
    limits = {name: threads for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    _current = get_reusable_executor(max_workers=workers, timeout=IDLE_S, env=limits)
    return _current


def stop() -> None:
    """Drop every task handed out and not finished, and end the worker processes: after an
    error or Ctrl-C their results are of no use, and at exit Python would wait for all of them.
    The next tasks start new workers."""
    global _current
    executor, _current = _current, None
    if executor is not None:
        executor.shutdown(wait=False, kill_workers=True)


# In a worker: the shared data it read last, by the key of the call that wrote it.
_held: tuple[tuple[str, str], object] | None = None


def _run_one(fn, key: tuple[str, str], env: dict[str, str], task):
    global _held
    for name in [k for k in os.environ if k.startswith("HERD_") and k not in env]:
        del os.environ[name]
    os.environ.update(env)
    if _held is None or _held[0] != key:
        _held = None  # let the previous data go before reading the next
        with open(key[0], "rb") as f:
            _held = (key, pickle.load(f))
    return fn(_held[1], task)
