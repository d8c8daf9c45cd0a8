"""Batching for the batch loop: the task window, out-of-memory splitting, and write-behind.

`TaskWindow` collects up to `size` runnable jobs and the finished records of the lines
between them (invalid, resumed, skipped: they take no slot), runs the jobs as one
engine call when the window is full, and releases records strictly in input order:
a record waits until every line before it has its record.

`synthesize_splitting` is that engine call: one `synthesize_many` over the window's
requests; when it runs out of memory the engine's memory is freed and the requests
are retried in halves, down to one request, so only a task that runs out of memory
alone fails.

`BackgroundWrites` moves the CPU and disk work of finished tasks (encoding, journal,
rename) to one writer thread, so the engine computes window k+1 while window k is
written; `InlineWrites` does the same work in the calling thread. The window waits
for window k's writes before it releases records after window k+1's engine call, so
at most one window of writes is outstanding.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

from .engines.base import BatchSynthesizer, Synthesis, SynthesisRequest, is_out_of_memory
from .errors import TaskError

__all__ = [
    "MAX_HELD_RECORDS",
    "BackgroundWrites",
    "InlineWrites",
    "TaskWindow",
    "Writes",
    "synthesize_splitting",
]

JobT = TypeVar("JobT")
RecordT = TypeVar("RecordT")
T = TypeVar("T")

# Records held behind a window that is still filling (e.g. a resumed run with a few tasks
# left among many done lines): past this many the window runs early, so memory stays flat.
MAX_HELD_RECORDS = 4096


class _Slot(Generic[RecordT]):
    """One input line's place in the output order: its record, or the future write of it."""

    __slots__ = ("generation", "outcome")

    def __init__(self, outcome: RecordT | Future[RecordT] | None = None, generation: int = 0) -> None:
        self.outcome = outcome
        self.generation = generation  # the window whose engine call produced it (0: none)


class TaskWindow(Generic[JobT, RecordT]):
    """Up to `size` runnable jobs, run together; every line's record released in input order.

    `run(jobs)` runs one window and returns one outcome per job, in order: its record, or
    a `Future` of it (the write-behind). Each `add_*`, `flush` and `finish` returns the
    records that became releasable, front first.
    """

    def __init__(
        self,
        size: int,
        run: Callable[[list[JobT]], Sequence[RecordT | Future[RecordT]]],
        *,
        max_held: int = MAX_HELD_RECORDS,
    ) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self.size = size
        self._run = run
        self._max_held = max_held
        self._slots: deque[_Slot[RecordT]] = deque()
        self._jobs: list[tuple[_Slot[RecordT], JobT]] = []
        self._generation = 0

    @property
    def pending(self) -> int:
        """Jobs waiting for the window to run."""
        return len(self._jobs)

    def add_record(self, record: RecordT) -> list[RecordT]:
        """A line that needs no engine call (invalid, resumed, skipped, failed before synthesis)."""
        self._slots.append(_Slot(record))
        if self._jobs and len(self._slots) > self._max_held:
            return self.flush()
        return self._release(wait_below=0)

    def add_job(self, job: JobT) -> list[RecordT]:
        """A runnable task; a full window runs now."""
        slot: _Slot[RecordT] = _Slot()
        self._slots.append(slot)
        self._jobs.append((slot, job))
        if len(self._jobs) >= self.size:
            return self.flush()
        return []  # its slot is unfilled, so nothing behind it can go

    def flush(self) -> list[RecordT]:
        """Run the pending jobs now (a full window, the input's end, a stop)."""
        if not self._jobs:
            return self._release(wait_below=0)
        jobs, self._jobs = self._jobs, []
        self._generation += 1
        outcomes = self._run([job for _, job in jobs])
        if len(outcomes) != len(jobs):
            raise RuntimeError(f"a window of {len(jobs)} jobs produced {len(outcomes)} outcomes")
        for (slot, _), outcome in zip(jobs, outcomes, strict=True):
            slot.outcome, slot.generation = outcome, self._generation
        # Earlier windows' writes overlapped this engine call; they must be done by now.
        return self._release(wait_below=self._generation)

    def finish(self) -> list[RecordT]:
        """Run what is pending and wait for every write: all remaining records."""
        released = self.flush()
        released += self._release(wait_below=self._generation + 1)
        assert not self._slots, "every slot is filled once no job is pending"
        return released

    def _release(self, *, wait_below: int) -> list[RecordT]:
        """Records from the front while they are known: a finished write, or (waiting for
        it) a write from a window before `wait_below`."""
        released: list[RecordT] = []
        while self._slots:
            outcome = self._slots[0].outcome
            if outcome is None:
                break  # a job still waiting for its window
            if isinstance(outcome, Future):
                if not outcome.done() and self._slots[0].generation >= wait_below:
                    break
                outcome = outcome.result()
            self._slots.popleft()
            released.append(outcome)
        return released


# Writes ---------------------------------------------------------------------------------


class Writes(Protocol):
    """Where the CPU work of a finished task runs; `close` waits for what was submitted."""

    def submit(self, fn: Callable[..., T], /, *args: object) -> Future[T]: ...

    def close(self) -> None: ...


class InlineWrites:
    """Runs each write at once in the calling thread (an already-completed future)."""

    def submit(self, fn: Callable[..., T], /, *args: object) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - delivered where the result is read
            future.set_exception(exc)
        return future

    def close(self) -> None:
        pass


class BackgroundWrites:
    """One writer thread, in submission order; the window bounds how far it may lag."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glmtts-writer")

    def submit(self, fn: Callable[..., T], /, *args: object) -> Future[T]:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# Out-of-memory splitting ------------------------------------------------------------------


def synthesize_splitting(
    synthesize_many: BatchSynthesizer,
    requests: Sequence[SynthesisRequest],
    *,
    free_memory: Callable[[], None],
    log: Callable[[str, Sequence[int]], None],
) -> list[Synthesis | Exception]:
    """One result per request, in order, however often the engine runs out of memory.

    The whole window goes to the engine in one call. After every out-of-memory error
    the engine's memory is freed (so the next call starts clean); a call of several
    requests that ran out of memory is retried as its two halves, each splitting again
    if need be, so only a request that runs out of memory alone gets the error as its
    result. A request whose own result is an out-of-memory error next to results for
    others is retried without them. Any other exception out of a call of several
    requests (an engine that broke the contract) retries each request alone, so a
    batch-mate is never failed by another task's problem. `log(message, indices)` gets
    one message per split, with the indices of the requests split (none for a request
    that fails alone: that is its record's error).
    """
    results: list[Synthesis | Exception | None] = [None] * len(requests)
    todo: list[list[int]] = [list(range(len(requests)))]  # a stack of index groups, front group last
    while todo:
        group = todo.pop()
        try:
            outcome = _call(synthesize_many, [requests[i] for i in group])
        except Exception as exc:  # noqa: BLE001 - turned into per-request results below
            if is_out_of_memory(exc):
                _free(free_memory, log, group)
            if len(group) == 1:
                results[group[0]] = exc
            elif is_out_of_memory(exc):
                todo += _halves(group, f"out of memory in a batch of {len(group)} ({_error(exc)})", log)
            else:
                log(f"a batch of {len(group)} failed as a whole ({_error(exc)}); retrying each task alone", group)
                todo += [[i] for i in reversed(group)]
            continue
        out_of_memory = [
            i
            for i, result in zip(group, outcome, strict=True)
            if isinstance(result, Exception) and is_out_of_memory(result)
        ]
        again = out_of_memory if len(group) > 1 else []
        for i, result in zip(group, outcome, strict=True):
            if i not in again:
                results[i] = result
        if out_of_memory:
            _free(free_memory, log, group)
        if again:
            if len(again) == len(group):  # nothing got through: halve, or this never ends
                todo += _halves(group, f"out of memory for every task of a batch of {len(group)}", log)
            else:
                log(
                    f"out of memory for {len(again)} of a batch of {len(group)}; "
                    "memory freed, retrying them without the others",
                    again,
                )
                todo.append(again)
    done = [result for result in results if result is not None]
    assert len(done) == len(requests), "every request has a result"
    return done


def _halves(group: list[int], why: str, log: Callable[[str, Sequence[int]], None]) -> list[list[int]]:
    """The group's two halves, back half first (the stack runs the front half next); logged once."""
    half = (len(group) + 1) // 2
    log(f"{why}; memory freed, retrying as {half} + {len(group) - half}", group)
    return [group[half:], group[:half]]


def _call(synthesize_many: BatchSynthesizer, requests: list[SynthesisRequest]) -> list[Synthesis | Exception]:
    outcome = list(synthesize_many(requests))
    if len(outcome) != len(requests):
        raise RuntimeError(f"engine returned {len(outcome)} results for {len(requests)} requests")
    return [
        result
        if isinstance(result, (Synthesis, Exception))
        else TaskError(f"engine returned {type(result).__name__}, expected Synthesis")
        for result in outcome
    ]


def _free(free_memory: Callable[[], None], log: Callable[[str, Sequence[int]], None], group: list[int]) -> None:
    try:
        free_memory()
    except Exception as exc:  # noqa: BLE001 - the retry may still fit
        log(f"free_memory failed after out-of-memory: {_error(exc)}", group)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
