"""Data stages throughput and peak memory: the library run streaming vs a naive in-memory pandas baseline.

Run from the repository root (either form):

    .venv/bin/python -m benchmarks.data_stages --threads 20000        # N = 20,000 and 4N = 80,000
    .venv/bin/python benchmarks/data_stages.py --threads 5000 --scale 4 --jobs 2

Corpus (deterministic, written to a temporary JSONL, never held whole in memory): thread k takes the
structure of a sample-corpus thread (characters, sheets, authors, attribution fields) and draws every
post's text from the pool of all sample-corpus posts (HTML, BBCode and plain, with the corpus's OOC,
quotes, links, signatures, mentions and mojibake), with a per-thread RNG. One thread in 100 is an exact
copy of the previous one and one in 100 a near copy (three words swapped), one line in 1,000 is
truncated JSON. The N-thread corpus is the first N lines of the 4N one.

Stages, each the plain library functions the Dagster assets call, in both modes:

- raw: JSONL -> canonical threads (`dumps._validate_thread`, the reader's own check) -> Parquet;
- filtered: handle pass, `clean_thread` + `rejection_reason`, dedup (`lib.dedup`), -> Parquet + rejects;
- augmented: `build_samples` (sheets + system prompt) -> samples Parquet.

Modes: `streaming` reads Parquet with `iter_batches` and writes with `ParquetWriter`, `--batch` threads
at a time; the only state that grows with the corpus is the dedup index (16 bytes per LSH band and
thread in memory, MinHash rows spilled to a file) and the set of thread ids seen. `pandas` loads the
whole stage input into memory (`read_dump`, `pandas.read_parquet`), builds every output row, then
writes one DataFrame — what the assets do today with `read_rows`.

Every (size, mode, stage) runs in a fresh spawned process; its peak RSS is that process's
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (the interpreter and imports included, so the floor is
the same for every row). The goal: streaming peak RSS grows at most 30 % from N to 4N.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

STAGES = ("raw", "filtered", "augmented")
MODES = ("streaming", "pandas")
DUMP = "bench.jsonl"


# ---------------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------------
def _sample_threads() -> list[dict]:
    from gcrp_assets.defs.resources import packaged_inbox
    from gcrp_assets.lib.dumps import find_dumps

    threads = []
    for path in find_dumps(packaged_inbox()):
        for line in path.read_text("utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record.get("posts"), list) and len(record["posts"]) >= 2:
                threads.append(record)
    return threads


_SWAPS = [("said", "replied"), ("looked", "glanced"), ("quietly", "softly"), ("slowly", "carefully"),
          ("moment", "second"), ("voice", "tone"), ("the", "that")]


def generate_corpus(path: Path, n: int) -> None:
    sources = _sample_threads()
    pool = [p["text"] for t in sources for p in t["posts"]]
    previous: dict | None = None
    with open(path, "w", encoding="utf-8") as out:
        for k in range(n):
            rng = random.Random(f"gcrp-bench/{k}")
            if previous is not None and k % 100 in (7, 13):
                thread = json.loads(json.dumps(previous))
                if k % 100 == 13:  # near copy: a few words swapped
                    swaps = 0
                    for post in thread["posts"]:
                        for old, new in _SWAPS:
                            if swaps < 3 and re.search(rf"\b{old}\b", post["text"]):
                                post["text"] = re.sub(rf"\b{old}\b", new, post["text"], count=1)
                                swaps += 1
            else:
                source = sources[rng.randrange(len(sources))]
                thread = json.loads(json.dumps(source))
                for post in thread["posts"]:
                    post["text"] = pool[rng.randrange(len(pool))]
            thread["thread_id"] = f"b-{k}"
            for i, post in enumerate(thread["posts"]):
                post["post_id"] = f"b-{k}-{i}"
            previous = thread
            line = json.dumps(thread, ensure_ascii=False)
            if k % 1000 == 999:
                line = line[: len(line) // 2]  # a truncated line: rejected with its number
            out.write(line + "\n")


def head_lines(source: Path, target: Path, n: int) -> None:
    with open(source, "rb") as inp, open(target, "wb") as out:
        for _, line in zip(range(n), inp):
            out.write(line)


# ---------------------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------------------
def _defaults():
    """The stages' default settings, from the library (no Dagster import: it would raise every RSS floor).
    `gcrp_assets_tests/test_cleaning.py` checks that these equal the FilterConfig/PromptConfig defaults."""
    from gcrp_assets.lib.cleaning import CleaningOptions
    from gcrp_assets.lib.dedup import DedupConfig
    from gcrp_assets.lib.filters import FilterRules
    from gcrp_assets.lib.prompts import PromptOptions, load_system_template
    from gcrp_assets.lib.sheets import SheetTemplate

    return {"rules": FilterRules(), "cleaning": CleaningOptions(), "dedup": DedupConfig(), "prompt": PromptOptions(),
            "sheet_template": SheetTemplate.load(), "system_template": load_system_template()}


def _line_record(number: int, raw: bytes, seen: set[int]) -> tuple[dict | None, dict | None]:
    """(thread, None) or (None, reject) for one JSONL line, by the canonical reader's rules."""
    import hashlib

    from gcrp_assets.lib.dumps import _reject, _validate_thread

    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, _reject(DUMP, number, "not_utf8", str(exc), raw.decode("utf-8", "replace"))
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, _reject(DUMP, number, "invalid_json", f"invalid JSON: {exc.msg} at column {exc.colno}", line)
    try:
        thread = _validate_thread(obj)
    except ValueError as exc:
        return None, _reject(DUMP, number, "invalid_thread", str(exc), line)
    key = int.from_bytes(hashlib.blake2b(thread["thread_id"].encode(), digest_size=8).digest(), "big")
    if key in seen:
        return None, _reject(DUMP, number, "duplicate_thread_id", "thread_id already used", line, thread["thread_id"])
    seen.add(key)
    return {"dump": DUMP, "line": number, **thread}, None


def _reject_row(thread: dict, reason: str, detail: str) -> dict:
    return {"dump": DUMP, "line": thread["line"], "thread_id": thread["thread_id"], "stage": "filtered_threads",
            "reason": reason, "detail": f"{DUMP}:{thread['line']}: thread {thread['thread_id']}: {detail}",
            "record": json.dumps(thread, ensure_ascii=False, sort_keys=True, default=str)}


class _Writer:
    """Rows appended in batches to one Parquet file (pyarrow.parquet.ParquetWriter)."""

    def __init__(self, path: Path, schema, batch: int):
        import pyarrow.parquet as pq

        self.schema, self.batch, self.rows, self.n = schema, batch, [], 0
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.n += len(self.rows)
            self.rows = []

    def close(self) -> int:
        self.flush()
        self.writer.close()
        return self.n


# ---------------------------------------------------------------------------------------------------
# Streaming stages
# ---------------------------------------------------------------------------------------------------
def raw_streaming(src: Path, out: Path, batch: int) -> dict:
    from gcrp_assets.lib import schemas

    threads, rejects = _Writer(out / "threads.parquet", schemas.RAW_THREADS, batch), \
        _Writer(out / "rejects.parquet", schemas.REJECTS, batch)
    seen: set[int] = set()
    lines = 0
    with open(src, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            lines += 1
            thread, reject = _line_record(number, raw, seen)
            (threads.add(thread) if thread else rejects.add(reject))
    return {"in": lines, "out": threads.close(), "rejected": rejects.close()}


def filtered_streaming(src: Path, out: Path, batch: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gcrp_assets.lib import schemas
    from gcrp_assets.lib.cleaning import HANDLE_COLUMNS, clean_thread, dump_handles_arrow
    from gcrp_assets.lib.dedup import SignatureStore
    from gcrp_assets.lib.filters import rejection_reason
    from gcrp_assets.lib.privacy import HandleScrubber

    d = _defaults()
    raw = pq.ParquetFile(src)
    # pass 1: every handle of the dump, reading the handle and name columns only
    scrubber = HandleScrubber(*dump_handles_arrow(raw.iter_batches(batch_size=batch * 8, columns=HANDLE_COLUMNS)))

    candidate_schema = schemas.FILTERED_THREADS.append(pa.field("line", pa.int64()))
    candidates = _Writer(out / "candidates.tmp.parquet", candidate_schema, batch)
    rejects = _Writer(out / "rejects.parquet", schemas.REJECTS, batch)
    store = SignatureStore(d["dedup"], spill_dir=out / "spill")
    n_in = 0
    for part in raw.iter_batches(batch_size=batch):  # pass 2: clean, filter, sign
        for thread in part.to_pylist():
            n_in += 1
            cleaned = clean_thread(thread, scrubber, d["cleaning"])
            verdict = rejection_reason(cleaned, d["rules"])
            if verdict:
                rejects.add(_reject_row(thread, *verdict))
                continue
            store.add(DUMP, thread["thread_id"], cleaned)
            candidates.add({**cleaned, "line": thread["line"]})
    candidates.close()
    duplicates = {d.thread_id: d for d in store.resolve()}
    store.close()

    kept = _Writer(out / "threads.parquet", schemas.FILTERED_THREADS, batch)
    dup_lines: dict[int, object] = {}
    for part in pq.ParquetFile(out / "candidates.tmp.parquet").iter_batches(batch_size=batch):  # pass 3
        for row in part.to_pylist():
            line = row.pop("line")
            if row["thread_id"] in duplicates:
                dup_lines[line] = duplicates[row["thread_id"]]
            else:
                kept.add(row)
    if dup_lines:  # the rejects keep the raw thread whole: read back only the row groups that hold them
        import pyarrow.compute as pc

        wanted = pa.array(sorted(dup_lines), pa.int64())
        for group in range(raw.metadata.num_row_groups):
            mask = pc.is_in(raw.read_row_group(group, columns=["line"]).column("line"), value_set=wanted)
            if pc.any(mask).as_py():
                for thread in raw.read_row_group(group).filter(mask).to_pylist():
                    dup = dup_lines[thread["line"]]
                    rejects.add(_reject_row(thread, dup.reason, dup.detail))
    (out / "candidates.tmp.parquet").unlink()
    return {"in": n_in, "out": kept.close(), "rejected": rejects.close(), "duplicates": len(duplicates)}


def augmented_streaming(src: Path, out: Path, batch: int) -> dict:
    import pyarrow.parquet as pq

    from gcrp_assets.lib import schemas
    from gcrp_assets.lib.prompts import build_samples

    d = _defaults()
    samples = _Writer(out / "samples.parquet", schemas.SAMPLES, batch)
    n_in = 0
    for part in pq.ParquetFile(src).iter_batches(batch_size=batch):
        for thread in part.to_pylist():
            n_in += 1
            for sample in build_samples(thread, d["sheet_template"], d["system_template"], options=d["prompt"]):
                samples.add(sample)
    return {"in": n_in, "out": samples.close()}


# ---------------------------------------------------------------------------------------------------
# Naive pandas baseline (whole stage input in memory)
# ---------------------------------------------------------------------------------------------------
def raw_pandas(src: Path, out: Path, batch: int) -> dict:
    import pandas as pd

    from gcrp_assets.lib.dumps import read_canonical_jsonl

    contents = read_canonical_jsonl(src)
    pd.DataFrame(contents.threads).to_parquet(out / "threads.parquet", compression="zstd")
    pd.DataFrame(contents.rejects).to_parquet(out / "rejects.parquet", compression="zstd")
    return {"in": contents.lines, "out": len(contents.threads), "rejected": len(contents.rejects)}


def filtered_pandas(src: Path, out: Path, batch: int) -> dict:
    import pandas as pd

    from gcrp_assets.lib.cleaning import clean_thread, dump_scrubber
    from gcrp_assets.lib.dedup import find_duplicates
    from gcrp_assets.lib.filters import rejection_reason

    d = _defaults()
    threads = pd.read_parquet(src, dtype_backend="pyarrow").to_dict("records")
    scrubber = dump_scrubber(threads)
    cleaned = [clean_thread(t, scrubber, d["cleaning"]) for t in threads]
    verdicts = [rejection_reason(c, d["rules"]) for c in cleaned]
    duplicates = {x.thread_id: x for x in find_duplicates([c for c, v in zip(cleaned, verdicts) if not v], d["dedup"])}
    kept, rejects = [], []
    for thread, clean, verdict in zip(threads, cleaned, verdicts):
        if verdict:
            rejects.append(_reject_row(thread, *verdict))
        elif clean["thread_id"] in duplicates:
            dup = duplicates[clean["thread_id"]]
            rejects.append(_reject_row(thread, dup.reason, dup.detail))
        else:
            kept.append(clean)
    pd.DataFrame(kept).to_parquet(out / "threads.parquet", compression="zstd")
    pd.DataFrame(rejects).to_parquet(out / "rejects.parquet", compression="zstd")
    return {"in": len(threads), "out": len(kept), "rejected": len(rejects), "duplicates": len(duplicates)}


def augmented_pandas(src: Path, out: Path, batch: int) -> dict:
    import pandas as pd

    from gcrp_assets.lib.prompts import build_samples

    d = _defaults()
    threads = pd.read_parquet(src, dtype_backend="pyarrow").to_dict("records")
    samples = [s for t in threads for s in build_samples(t, d["sheet_template"], d["system_template"],
                                                          options=d["prompt"])]
    pd.DataFrame(samples).to_parquet(out / "samples.parquet", compression="zstd")
    return {"in": len(threads), "out": len(samples)}


STAGE_FUNCTIONS = {
    ("streaming", "raw"): raw_streaming, ("streaming", "filtered"): filtered_streaming,
    ("streaming", "augmented"): augmented_streaming,
    ("pandas", "raw"): raw_pandas, ("pandas", "filtered"): filtered_pandas, ("pandas", "augmented"): augmented_pandas,
}


# ---------------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------------
def _child(mode: str, stage: str, src: str, out: str, batch: int, conn) -> None:
    try:
        start = time.perf_counter()
        stats = STAGE_FUNCTIONS[(mode, stage)](Path(src), Path(out), batch)
        stats["seconds"] = time.perf_counter() - start
        stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        conn.send(stats)
    except BaseException as exc:  # report, do not hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        conn.close()


def run_stage(mode: str, stage: str, src: Path, out: Path, batch: int) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited, peak RSS is this stage's own
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(mode, stage, str(src), str(out), batch, child))
    process.start()
    child.close()
    stats = parent.recv()
    process.join()
    if "error" in stats:
        raise RuntimeError(f"{mode}/{stage}: {stats['error']}")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=20_000, help="N (the smaller corpus)")
    parser.add_argument("--scale", type=int, default=4, help="the larger corpus is scale x N")
    parser.add_argument("--batch", type=int, default=256, help="threads per streaming batch")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir, removed)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--jobs", type=int, default=1, help="modes run side by side (2 on a 2-core machine)")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="gcrp-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    sizes = [args.threads, args.threads * args.scale]
    began = time.perf_counter()
    try:
        big = root / f"corpus-{sizes[1]}.jsonl"
        start = time.perf_counter()
        generate_corpus(big, sizes[1])
        small = root / f"corpus-{sizes[0]}.jsonl"
        head_lines(big, small, sizes[0])
        print(f"corpus: {sizes[1]} threads, {big.stat().st_size / 2**20:.0f} MiB, generated in "
              f"{time.perf_counter() - start:.0f} s; N = {sizes[0]} is its first {sizes[0]} lines", flush=True)
        results = []

        def chain(n: int, corpus: Path, mode: str) -> None:
            src = corpus
            for stage in STAGES:
                out = root / f"{mode}-{n}" / stage
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                stats = run_stage(mode, stage, src, out, args.batch)
                results.append({"n": n, "mode": mode, "stage": stage, **stats})
                r = results[-1]
                print(f"  {n:>7} {mode:<9} {stage:<9} in {r['in']:>7} out {r['out']:>7} "
                      f"{r['seconds']:8.1f} s {r['in'] / r['seconds']:9.1f} threads/s "
                      f"{r['peak_rss_mb']:8.1f} MiB", flush=True)
                src = out / ("threads.parquet" if stage != "augmented" else "samples.parquet")

        # --jobs 2 runs the modes side by side (one single-threaded child process each; a 2-core machine
        # then does the whole benchmark in half the time, each row still measured in its own process).
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for n, corpus in zip(sizes, (small, big)):
                list(pool.map(lambda mode: chain(n, corpus, mode), modes))
        order = {(n, m, s): i for i, (n, m, s) in enumerate((n, m, s) for n in sizes for m in modes for s in STAGES)}
        results.sort(key=lambda r: order[(r["n"], r["mode"], r["stage"])])
        print()
        print(table(results, sizes, modes))
        print(f"\ntotal wall time {time.perf_counter() - began:.0f} s")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def table(results: list[dict], sizes: list[int], modes: list[str]) -> str:
    lines = ["| threads | mode | stage | in | out | seconds | threads/s | peak RSS MiB |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['n']} | {r['mode']} | {r['stage']} | {r['in']} | {r['out']} | {r['seconds']:.1f} | "
                     f"{r['in'] / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"| mode | stage | peak RSS at {sizes[0]} | at {sizes[1]} | growth | whole-pipeline threads/s "
                  f"at {sizes[0]} | at {sizes[1]} |", "|---|---|---:|---:|---:|---:|---:|"]
    by = {(r["n"], r["mode"], r["stage"]): r for r in results}
    for mode in modes:
        for stage in STAGES + ("all",):
            if stage == "all":
                small = max(by[(sizes[0], mode, s)]["peak_rss_mb"] for s in STAGES)
                large = max(by[(sizes[1], mode, s)]["peak_rss_mb"] for s in STAGES)
                speed = [n / sum(by[(n, mode, s)]["seconds"] for s in STAGES) for n in sizes]
                lines.append(f"| {mode} | max over stages | {small:.0f} | {large:.0f} | {large / small - 1:+.0%} | "
                             f"{speed[0]:.0f} | {speed[1]:.0f} |")
            else:
                small, large = by[(sizes[0], mode, stage)]["peak_rss_mb"], by[(sizes[1], mode, stage)]["peak_rss_mb"]
                lines.append(f"| {mode} | {stage} | {small:.0f} | {large:.0f} | {large / small - 1:+.0%} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
