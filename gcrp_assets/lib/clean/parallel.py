"""Process-parallel batches for the per-dump data stages, with outputs that do not depend on the worker count.

A stage reads its input Parquet file `batch` rows at a time (`numbered_batches`) and hands each batch to a job: a
picklable callable that turns one batch into one result. `ordered_map` runs the job in this process
(`workers` <= 1) or in this process and `workers - 1` spawned worker processes (this one takes a batch whenever
the next result is not ready), and yields the results in input order either way, so a stage that merges them in
that order writes the same bytes whatever the number of workers. With workers, a batch is handed out in quarters
(`unit_rows`) so that the processes finish together. At most `WINDOW × workers` items (two batches' rows per
process) are in flight, so memory is bounded by the batch size, not by the dump.

Workers are spawned, not forked: the caller may hold threads (Dagster's run worker, Arrow's thread pools), and a
fork copies their locks. A spawned worker imports only what the job's module imports (no Dagster) and receives
the job once, when it starts.

The stages merge the results with `lib.parquet.ArrowBatchWriter` (Arrow tables in, record batches of exactly
`batch` rows out: the same bytes as the same rows added one at a time to a `RowWriter`).
"""

from __future__ import annotations

import importlib.abc
import os
import pickle
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


# `workers = 0` (the settings' default) means every usable core, up to this many: past it the parent, which merges
# the results and writes the outputs alone, becomes the bottleneck.
MAX_AUTO_WORKERS = 8


def workers_setting():
    """The `workers` setting of `CleaningOptions` (filtered_threads) and `PromptOptions` (augmented_prompts): one
    help text. It is left out of the stages' fingerprints: the outputs do not depend on it."""
    return field(default=0, metadata={
        "help": f"Processes for this stage's batches, the run's own process included: 0 = every usable core (at "
                f"most {MAX_AUTO_WORKERS}), 1 = the run's process alone. The output is byte-identical for any value; "
                "a dump of one batch runs in the run's process."})


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_count(workers: int, n_batches: int) -> int:
    """How many processes to use: `workers` (0 = every usable core, at most `MAX_AUTO_WORKERS`), never more than
    there are batches. 1 means: in this process, no pool."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = every usable core), got {workers}")
    wanted = workers or min(usable_cores(), MAX_AUTO_WORKERS)
    return max(1, min(wanted, n_batches))


def batch_count(path: Path, batch: int) -> int:
    rows = pq.ParquetFile(path).metadata.num_rows
    return -(-rows // max(1, batch))


def unit_rows(batch: int, workers: int) -> int:
    """Rows per work item: the whole batch in one process; a quarter of it (`UNITS_PER_BATCH`) with workers, so
    that the processes run out of work together. Measured on 4,000 threads with 2 processes: the run's process
    waited 0.3–1.2 s at the end for the spawned worker's last whole batch (the worker starts half a second
    later), 0.2–0.3 s for its last quarter. The outputs do not depend on it (the writers cut `batch`-row record
    batches)."""
    return batch if workers <= 1 else max(1, -(-batch // UNITS_PER_BATCH))


UNITS_PER_BATCH = 4


def numbered_batches(path: Path, batch: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(position of the batch's first row in the file, record batch of up to `batch` rows), in file order."""
    first = 0
    for part in pq.ParquetFile(path).iter_batches(batch_size=max(1, batch)):
        yield first, part
        first += part.num_rows


def can_send(job: Any) -> bool:
    """Whether `job` can go to a worker process (a lambda or a loaded model cannot: the stage then runs here)."""
    try:
        pickle.dumps(job)
    except Exception:  # noqa: BLE001 - pickling may raise anything from a custom __reduce__
        return False
    return True


_JOB: Callable | None = None


def _start_worker(job: Callable) -> None:
    global _JOB
    _skip_pandas_probe()
    _JOB = job


class _RefusePandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            raise ModuleNotFoundError("pandas is not imported in a data-stage worker", name=name)
        return None


def _skip_pandas_probe() -> None:
    """pyarrow imports pandas (0.2-0.4 s) the first time it turns Python objects into an array, only to ask whether
    they are pandas objects, and keeps the answer; nothing in a data-stage worker uses pandas. The import is refused
    for that one question, so pyarrow converts as it does where pandas is not installed (anything that asks for
    pandas later imports it as usual)."""
    if "pandas" in sys.modules:
        return
    refuse = _RefusePandas()
    sys.meta_path.insert(0, refuse)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(refuse)


def _run_in_worker(item: Any) -> Any:
    assert _JOB is not None, "worker started without a job"
    return _JOB(item)


def ordered_map(job: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """`job(item)` for each item, in order, in `workers` processes: this one and `workers - 1` spawned ones.

    The spawned workers are kept fed (at most two items each handed to them); this process runs the earliest item
    nobody has started whenever the next result in order is not ready, so no core idles while the workers start
    (about half a second: an interpreter and the job's imports) and no process only waits. At most
    `WINDOW × workers` items are pulled from `items` and not yet yielded. An item's error is raised when its result
    would have been yielded, as in one process."""
    if workers <= 1:
        for item in items:
            yield job(item)
        return
    pool = ProcessPoolExecutor(max_workers=workers - 1, mp_context=get_context("spawn"), initializer=_start_worker,
                               initargs=(job,))
    in_pool_limit = 2 * (workers - 1)
    # [state, value] in input order: ("item", item) | ("future", Future) | ("done", result) | ("failed", exception)
    window: deque[list] = deque()
    source = iter(items)
    exhausted = working_here = False
    try:
        while True:
            while not exhausted and len(window) < WINDOW * workers:
                item = next(source, _END)
                if item is _END:
                    exhausted = True
                else:
                    window.append(["item", item])
            in_pool = sum(1 for state, _ in window if state == "future")
            for entry in window:
                # Until this process has taken an item, one per worker: the next one is this process's first.
                if in_pool >= (in_pool_limit if working_here else workers - 1):
                    break
                if entry[0] == "item":
                    entry[:] = ["future", pool.submit(_run_in_worker, entry[1])]
                    in_pool += 1
            if not window:
                return
            state, value = window[0]
            if state == "failed":
                window.popleft()
                raise value
            if state == "done" or state == "future" and value.done():
                window.popleft()
                yield value if state == "done" else value.result()
                continue
            waiting = next((entry for entry in window if entry[0] == "item"), None)
            if waiting is not None:
                working_here = True
                try:  # the head is being worked on elsewhere, or is this one
                    waiting[:] = ["done", job(waiting[1])]
                except Exception as error:  # raised in its turn, as one process would: earlier results first
                    waiting[:] = ["failed", error]
            else:
                wait([value], return_when=FIRST_COMPLETED)
    finally:
        for state, value in window:
            if state == "future":
                value.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()
# Items in flight per process: two batches' rows in quarter-batch items (`unit_rows`). This process runs ahead of
# order while a worker holds the next result, and those results wait in the window: a wider window keeps it busier
# (measured, in whole batches: no faster at 4) but holds more rows (peak memory +33 % instead of +18 % from 1,000 to
# 4,000 threads at 4 batches).
WINDOW = 2 * UNITS_PER_BATCH


# ---------------------------------------------------------------------------------------------------
# Work files between a worker and the parent: Arrow IPC, uncompressed (written once, read once, deleted)
# ---------------------------------------------------------------------------------------------------
def write_part(path: Path, rows: list[dict], schema: pa.Schema) -> Path | None:
    if not rows:
        return None
    table = pa.Table.from_pylist(rows, schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(table)
    return path


def read_part(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_file(source).read_all()
