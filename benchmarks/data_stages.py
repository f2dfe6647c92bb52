"""Data stages throughput and peak memory: the library's streaming stages (in worker processes) side by side with
the same stages of an earlier commit (`baseline`, one process) and a naive in-memory pandas version.

Run from the repository root (either form):

    .venv/bin/python -m benchmarks.data_stages --threads 1000 --modes baseline,streaming   # N = 1,000, 4N = 4,000
    .venv/bin/python -m benchmarks.data_stages --threads 20000        # N = 20,000 and 4N = 80,000, every mode
    .venv/bin/python benchmarks/data_stages.py --threads 5000 --scale 4 --workers 2

Corpus (`benchmarks.corpus.generate_corpus`: deterministic, written to a temporary JSONL, never held whole
in memory): thread k takes the structure of a sample-corpus thread (characters, sheets, authors, attribution
fields) and draws every post's text from the pool of all sample-corpus posts (HTML, BBCode and plain, with
the corpus's OOC, quotes, links, signatures, mentions and mojibake), with a per-thread RNG. One thread in
100 is an exact copy of the previous one and one in 100 a near copy (three words swapped), one line in
1,000 is truncated JSON. The N-thread corpus is the first N lines of the 4N one.

Stages, in both modes the same library functions per thread:

- raw: JSONL -> canonical threads (`dumps.validate_thread`, the reader's own check) -> Parquet;
- filtered: handle pass, `clean_thread` + `rejection_reason`, dedup (`lib.dedup`), -> Parquet + rejects;
- augmented: `build_samples` (sheets + system prompt) -> samples Parquet (+ the privacy scan).

Modes: `streaming` runs `lib.ingest.stage.run_raw`, `lib.clean.stage.run_filtered` and
`lib.prompts.stage.run_augmented`, the very functions the Dagster assets call, with `--workers` processes (its own and
`--workers` - 1 spawned ones; 0 = every usable core, as the assets): input read `--batch` threads at a time (`iter_dump`, `iter_batches`), outputs written
incrementally (`ParquetWriter`); the state that grows with the corpus is the dedup index (8 bytes per LSH band and
thread and the thread key in memory, MinHash rows spilled to a file), the thread ids seen and the dump's handle set.
`baseline` runs the same three functions of the commit `--baseline-ref` (default: the last commit before the data
stages used worker processes), extracted with `git archive` into the work folder and imported from there by its
child processes: today's code against that code, on the same corpus, in the same run. `pandas` is the naive
version: it loads the whole stage input into memory (`read_canonical_jsonl`, `pandas.read_parquet`), builds every
output row, then writes one DataFrame. The streaming outputs are checked to be byte-identical to the baseline's.

Every (size, mode, stage) runs in a fresh spawned process, one after the other, `--repeat` times (its time is the
median run's: two busy processes on a small shared machine vary by a fifth from run to run); its peak RSS is that
process's
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (the interpreter and imports included, so the floor is the same for
every row) plus, for the streaming stages, `--workers` - 1 times the largest spawned worker's (`RUSAGE_CHILDREN`;
the stage's own process is one of its workers): an upper bound of the memory the stage holds at once. The goal: streaming peak RSS grows at most 30 % from N to 4N.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import filecmp  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from benchmarks.corpus import generate_corpus, head_lines  # noqa: E402

STAGES = ("raw", "filtered", "augmented")
MODES = ("baseline", "streaming", "pandas")
# The last commit whose data stages ran in one process, without the hot-spot fixes (issue 17).
BASELINE_REF = "091e1a9"
OUTPUTS = {"raw": ("threads.parquet", "rejects.parquet"), "filtered": ("threads.parquet", "rejects.parquet"),
           "augmented": ("samples.parquet",)}


# ---------------------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------------------
def _defaults():
    """The stages' default settings, from the library (no Dagster import: it would raise every RSS floor).
    `gcrp_assets_tests/test_cleaning.py` checks that these equal the FilterConfig/PromptConfig defaults."""
    from gcrp_assets.lib.clean.cleaning import CleaningOptions
    from gcrp_assets.lib.clean.dedup import DedupConfig
    from gcrp_assets.lib.clean.filters import FilterRules
    from gcrp_assets.lib.prompts.samples import PromptOptions, load_system_template
    from gcrp_assets.lib.prompts.sheets import SheetTemplate

    return {"rules": FilterRules(), "cleaning": CleaningOptions(), "dedup": DedupConfig(), "prompt": PromptOptions(),
            "sheet_template": SheetTemplate.load(), "system_template": load_system_template()}


# ---------------------------------------------------------------------------------------------------
# Streaming stages: exactly the functions the Dagster assets call (gcrp_assets.lib.stages)
# ---------------------------------------------------------------------------------------------------
def _workers_kw(workers: int | None) -> dict:
    return {} if workers is None else {"workers": workers}  # the baseline's functions have no `workers`


def raw_streaming(src: Path, out: Path, batch: int, workers: int | None) -> dict:
    from gcrp_assets.lib.ingest.stage import run_raw

    m = run_raw(src, out, batch=batch)
    return {"in": m["lines"], "out": m["threads"], "rejected": m["rejected_lines"]}


def filtered_streaming(src: Path, out: Path, batch: int, workers: int | None) -> dict:
    from gcrp_assets.lib.clean.stage import run_filtered

    d = _defaults()
    m = run_filtered(src, out, d["rules"], d["cleaning"], d["dedup"], batch=batch, **_workers_kw(workers))
    duplicates = m["reasons"].get("exact_duplicate", 0) + m["reasons"].get("near_duplicate", 0)
    return {"in": m["threads_in"], "out": m["threads_kept"], "rejected": m["threads_rejected"],
            "duplicates": duplicates}


def augmented_streaming(src: Path, out: Path, batch: int, workers: int | None) -> dict:
    from gcrp_assets.lib.prompts.stage import run_augmented

    d = _defaults()
    raw = src.parent.parent / "raw" / "threads.parquet"  # the privacy check's handles, as the asset reads them
    m = run_augmented(src, raw, out, d["sheet_template"], d["system_template"], d["prompt"], batch=batch,
                      **_workers_kw(workers))
    return {"in": m["threads"], "out": m["samples"]}


# ---------------------------------------------------------------------------------------------------
# Naive pandas baseline (whole stage input in memory)
# ---------------------------------------------------------------------------------------------------
def raw_pandas(src: Path, out: Path, batch: int, workers: int | None) -> dict:
    import pandas as pd

    from gcrp_assets.lib.ingest.canonical import read_canonical_jsonl

    contents = read_canonical_jsonl(src)
    pd.DataFrame(contents.threads).to_parquet(out / "threads.parquet", compression="zstd")
    pd.DataFrame(contents.rejects).to_parquet(out / "rejects.parquet", compression="zstd")
    return {"in": contents.lines, "out": len(contents.threads), "rejected": len(contents.rejects)}


def filtered_pandas(src: Path, out: Path, batch: int, workers: int | None) -> dict:
    import pandas as pd

    from gcrp_assets.lib.clean.cleaning import clean_thread, dump_scrubber
    from gcrp_assets.lib.clean.dedup import find_duplicates
    from gcrp_assets.lib.clean.filters import rejection_reason
    from gcrp_assets.lib.clean.stage import filter_reject

    d = _defaults()
    threads = pd.read_parquet(src, dtype_backend="pyarrow").to_dict("records")
    scrubber = dump_scrubber(threads)
    cleaned = [clean_thread(t, scrubber, d["cleaning"]) for t in threads]
    verdicts = [rejection_reason(c, d["rules"]) for c in cleaned]
    duplicates = {x.thread_id: x for x in find_duplicates([c for c, v in zip(cleaned, verdicts) if not v], d["dedup"])}
    kept, rejects = [], []
    for thread, clean, verdict in zip(threads, cleaned, verdicts):
        if verdict:
            rejects.append(filter_reject(thread, *verdict))
        elif clean["thread_id"] in duplicates:
            dup = duplicates[clean["thread_id"]]
            rejects.append(filter_reject(thread, dup.reason, dup.detail))
        else:
            kept.append(clean)
    pd.DataFrame(kept).to_parquet(out / "threads.parquet", compression="zstd")
    pd.DataFrame(rejects).to_parquet(out / "rejects.parquet", compression="zstd")
    return {"in": len(threads), "out": len(kept), "rejected": len(rejects), "duplicates": len(duplicates)}


def augmented_pandas(src: Path, out: Path, batch: int, workers: int | None) -> dict:
    import pandas as pd

    from gcrp_assets.lib.prompts.samples import build_samples

    d = _defaults()
    threads = pd.read_parquet(src, dtype_backend="pyarrow").to_dict("records")
    samples = [s for t in threads for s in build_samples(t, d["sheet_template"], d["system_template"],
                                                          options=d["prompt"])]
    pd.DataFrame(samples).to_parquet(out / "samples.parquet", compression="zstd")
    return {"in": len(threads), "out": len(samples)}


STAGE_FUNCTIONS = {
    ("streaming", "raw"): raw_streaming, ("streaming", "filtered"): filtered_streaming,
    ("streaming", "augmented"): augmented_streaming,
    ("baseline", "raw"): raw_streaming, ("baseline", "filtered"): filtered_streaming,
    ("baseline", "augmented"): augmented_streaming,
    ("pandas", "raw"): raw_pandas, ("pandas", "filtered"): filtered_pandas, ("pandas", "augmented"): augmented_pandas,
}


# ---------------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------------
def baseline_source(ref: str, root: Path) -> Path:
    """The package `gcrp_assets` as of commit `ref`, extracted under `root` (`git archive`)."""
    target = root / f"baseline-{ref}"
    if not (target / "gcrp_assets").is_dir():
        archive = root / f"baseline-{ref}.tar"
        with open(archive, "wb") as out:
            subprocess.run(["git", "-C", str(_HERE.parent), "archive", ref, "gcrp_assets"], stdout=out, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        archive.unlink()
    return target


def _child(mode: str, stage: str, src: str, out: str, batch: int, workers: int | None, source: str | None,
           conn) -> None:
    try:
        if source:  # the baseline: import gcrp_assets from the extracted commit, not from this checkout
            sys.path.insert(0, source)
            import gcrp_assets

            assert Path(gcrp_assets.__file__).resolve().is_relative_to(Path(source).resolve()), gcrp_assets.__file__
        start = time.perf_counter()
        stats = STAGE_FUNCTIONS[(mode, stage)](Path(src), Path(out), batch, workers)
        stats["seconds"] = time.perf_counter() - start
        stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        stats["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers else 0.0
        conn.send(stats)
    except BaseException as exc:  # report, do not hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        conn.close()


def run_stage(mode: str, stage: str, src: Path, out: Path, batch: int, workers: int | None = None,
              source: Path | None = None) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited, peak RSS is this stage's own
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(mode, stage, str(src), str(out), batch, workers,
                                               str(source) if source else None, child))
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
    parser.add_argument("--batch", type=int, default=512, help="threads per streaming batch (the assets' default)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir, removed)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes of the streaming stages (0 = every usable core, as the assets)")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="commit whose stages the baseline mode runs")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each (size, mode, stage); its time is their median, its peak RSS their largest")
    parser.add_argument("--jobs", type=int, default=1,
                        help="modes run side by side (they then share the cores: timings are not comparable)")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    from gcrp_assets.lib.clean.parallel import worker_count

    workers = worker_count(args.workers, 1 << 30)
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
              f"{time.perf_counter() - start:.0f} s; N = {sizes[0]} is its first {sizes[0]} lines; "
              f"{workers} worker processes for streaming, {os.cpu_count()} CPUs", flush=True)
        source = baseline_source(args.baseline_ref, root) if "baseline" in modes else None
        results = []

        def chain(n: int, corpus: Path, mode: str) -> None:
            src = corpus
            for stage in STAGES:
                out = root / f"{mode}-{n}" / stage
                runs = []
                for _ in range(max(1, args.repeat)):
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                    stats = run_stage(mode, stage, src, out, args.batch, workers if mode == "streaming" else None,
                                      source if mode == "baseline" else None)
                    stats["workers"] = workers if mode == "streaming" and stage != "raw" else 1
                    # The stage's process is one of its `workers` (`parallel.ordered_map`): workers - 1 spawned ones.
                    stats["total_rss_mb"] = stats["peak_rss_mb"] + (stats["workers"] - 1) * stats["worker_rss_mb"]
                    runs.append(stats)
                    print(f"  {n:>7} {mode:<9} {stage:<9} in {stats['in']:>7} out {stats['out']:>7} "
                          f"{stats['seconds']:8.1f} s {stats['in'] / stats['seconds']:9.1f} threads/s "
                          f"{stats['total_rss_mb']:8.1f} MiB", flush=True)
                # The median run's numbers, the largest peak RSS of all runs.
                median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
                results.append({"n": n, "mode": mode, "stage": stage, **median,
                                "total_rss_mb": max(r["total_rss_mb"] for r in runs),
                                "all_seconds": [round(r["seconds"], 2) for r in runs]})
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
        if "baseline" in modes and "streaming" in modes:
            print()
            print(speedups(results, sizes))
            print()
            print(same_outputs(root, sizes))
        print(f"\ntotal wall time {time.perf_counter() - began:.0f} s")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def speedups(results: list[dict], sizes: list[int]) -> str:
    by = {(r["n"], r["mode"], r["stage"]): r for r in results}
    lines = ["| threads | stage | baseline threads/s | streaming threads/s (workers) | speed-up | seconds per run: "
             "baseline / streaming |", "|---:|---|---:|---:|---:|---|"]
    for n in sizes:
        for stage in STAGES:
            old, new = by[(n, "baseline", stage)], by[(n, "streaming", stage)]
            old_rate, new_rate = old["in"] / old["seconds"], new["in"] / new["seconds"]
            runs = " / ".join(", ".join(f"{t:.1f}" for t in r["all_seconds"]) for r in (old, new))
            lines.append(f"| {n} | {stage} | {old_rate:.0f} | {new_rate:.0f} ({new['workers']}) | "
                         f"{new_rate / old_rate:.2f}x | {runs} |")
    return "\n".join(lines)


def same_outputs(root: Path, sizes: list[int]) -> str:
    """Whether every streaming output file is byte-identical to the baseline's."""
    different = [f"{n}/{stage}/{name}" for n in sizes for stage in STAGES for name in OUTPUTS[stage]
                 if not filecmp.cmp(root / f"baseline-{n}" / stage / name, root / f"streaming-{n}" / stage / name,
                                    shallow=False)]
    return ("outputs: every streaming output is byte-identical to the baseline's" if not different
            else f"outputs that differ from the baseline's: {', '.join(different)}")


def table(results: list[dict], sizes: list[int], modes: list[str]) -> str:
    lines = ["| threads | mode | stage | workers | in | out | seconds | threads/s | peak RSS MiB |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['n']} | {r['mode']} | {r['stage']} | {r['workers']} | {r['in']} | {r['out']} | "
                     f"{r['seconds']:.1f} | {r['in'] / r['seconds']:.0f} | {r['total_rss_mb']:.0f} |")
    lines += ["", f"| mode | stage | peak RSS at {sizes[0]} | at {sizes[1]} | growth | whole-pipeline threads/s "
                  f"at {sizes[0]} | at {sizes[1]} |", "|---|---|---:|---:|---:|---:|---:|"]
    by = {(r["n"], r["mode"], r["stage"]): r for r in results}
    for mode in modes:
        for stage in STAGES + ("all",):
            if stage == "all":
                small = max(by[(sizes[0], mode, s)]["total_rss_mb"] for s in STAGES)
                large = max(by[(sizes[1], mode, s)]["total_rss_mb"] for s in STAGES)
                speed = [n / sum(by[(n, mode, s)]["seconds"] for s in STAGES) for n in sizes]
                lines.append(f"| {mode} | max over stages | {small:.0f} | {large:.0f} | {large / small - 1:+.0%} | "
                             f"{speed[0]:.0f} | {speed[1]:.0f} |")
            else:
                small, large = by[(sizes[0], mode, stage)]["total_rss_mb"], by[(sizes[1], mode, stage)]["total_rss_mb"]
                lines.append(f"| {mode} | {stage} | {small:.0f} | {large:.0f} | {large / small - 1:+.0%} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
