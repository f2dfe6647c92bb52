"""Peak memory of the data stages on hostile dumps, side by side with a normal dump (a benchmark, not a test).

Run from the repository root (either form):

    .venv/bin/python -m benchmarks.hostile_memory                      # N = 2,000 threads, a 2 GB line
    .venv/bin/python benchmarks/hostile_memory.py --threads 5000 --line-gb 2 --post-mb 50

Dumps (written to a temporary folder, never held whole in memory):

- `normal.jsonl`: N threads of the `benchmarks.corpus` forum corpus (sample-corpus structure and posts);
- `one_line_2gb.jsonl.gz`: one JSON line of `--line-gb` GB (a thread whose only post is that long, text
  repeating a 16 KiB run of sample-corpus posts), gzipped: a few MB on disk;
- `post_50mb.jsonl`: the normal dump with the first post of its middle thread made `--post-mb` MB long;
- the same once more with `max_record_bytes` raised to 64 MiB (`post_50mb.jsonl @64MiB`), so that the
  50 MB post passes the reader and reaches `filtered_threads` (`post_too_long`).

Each dump goes through `gcrp_assets.lib.stages.run_raw`, then `run_filtered`, then `run_augmented` (the
functions the Dagster assets call, with the stages' default settings), each stage in a fresh spawned
process whose peak RSS is its `resource.getrusage(RUSAGE_SELF).ru_maxrss` (the interpreter and imports
included, the same floor for every row). The table gives, per dump and stage, records in/out, seconds,
peak RSS and its ratio to the normal dump's same stage. Goal: every hostile row under 600 MiB.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchmarks.corpus import generate_corpus, sample_threads  # noqa: E402
from benchmarks.data_stages import _defaults  # noqa: E402

STAGES = ("raw", "filtered", "augmented")
GOAL_MIB = 600
MiB = 1 << 20


# ---------------------------------------------------------------------------------------------------
# Dumps
# ---------------------------------------------------------------------------------------------------
def _filler(size: int) -> bytes:
    """`size` bytes of real post text (JSON-string safe), cut from the sample corpus."""
    text = " ".join(p["text"] for t in sample_threads() for p in t["posts"])
    raw = json.dumps(text, ensure_ascii=True)[1:-1].encode("ascii")
    while len(raw) < size:
        raw += raw
    raw = raw[:size]
    return raw[:-1] if raw.endswith(b"\\") else raw  # never end inside an escape


def write_long_line_gz(path: Path, size: int) -> None:
    period = _filler(16 * 1024)  # shorter than gzip's 32 KiB window: compresses like a bomb
    head = json.dumps({"thread_id": "long-line", "title": "one very long line",
                       "characters": [{"name": "Mira Vell", "player": "nightowl_77"}]})[:-1]
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
        out.write((head + ', "posts": [{"author": "nightowl_77", "character": "Mira Vell", "text": "').encode())
        block = period * (MiB // len(period))
        written = 0
        while written < size:
            out.write(block)
            written += len(block)
        out.write(b'"}]}\n')


def write_long_post(normal: Path, path: Path, size: int) -> None:
    """The normal dump with the first post of its middle thread `size` bytes long (streamed)."""
    lines = sum(1 for _ in open(normal, "rb"))
    middle = lines // 2
    filler = _filler(MiB)
    with open(normal, "rb") as inp, open(path, "wb") as out:
        for i, line in enumerate(inp):
            if i != middle:
                out.write(line)
                continue
            record = json.loads(line)
            record["posts"][0]["text"] = "@@FILL@@"
            before, after = json.dumps(record, ensure_ascii=False).encode().split(b"@@FILL@@")
            out.write(before)
            for _ in range(size // len(filler)):
                out.write(filler)
            out.write(after + b"\n")


# ---------------------------------------------------------------------------------------------------
# Stages, each in a fresh process
# ---------------------------------------------------------------------------------------------------
def _stage(stage: str, src: str, raw: str, out: str, max_record_bytes: int | None) -> dict:
    from gcrp_assets.lib.ingest import lines
    from gcrp_assets.lib.clean import stage as clean_stage
    from gcrp_assets.lib.ingest import stage as ingest_stage
    from gcrp_assets.lib.prompts import stage as prompt_stage

    if max_record_bytes:
        lines.MAX_RECORD_BYTES = max_record_bytes
    d = _defaults()
    if stage == "raw":
        m = ingest_stage.run_raw(Path(src), Path(out))
        return {"in": m["lines"], "out": m["threads"], "rejected": m["rejected_lines"],
                "reasons": sorted({r[2] for r in m["rejects_listed"]})}
    if stage == "filtered":
        m = clean_stage.run_filtered(Path(src), Path(out), d["rules"], d["cleaning"], d["dedup"])
        return {"in": m["threads_in"], "out": m["threads_kept"], "rejected": m["threads_rejected"],
                "reasons": sorted(m["reasons"])}
    m = prompt_stage.run_augmented(Path(src), Path(raw), Path(out), d["sheet_template"], d["system_template"], d["prompt"])
    return {"in": m["threads"], "out": m["samples"], "rejected": 0, "reasons": []}


def _child(args: tuple, conn) -> None:
    try:
        start = time.perf_counter()
        stats = _stage(*args)
        stats["seconds"] = time.perf_counter() - start
    except BaseException as exc:  # report, do not hang the parent
        stats = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    stats["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    conn.send(stats)
    conn.close()


def run_stage(stage: str, src: Path, raw: Path, out: Path, max_record_bytes: int | None) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter: the peak is this stage's own
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=((stage, str(src), str(raw), str(out), max_record_bytes), child))
    process.start()
    child.close()
    stats = parent.recv()
    process.join()
    return stats


def chain(name: str, dump: Path, root: Path, max_record_bytes: int | None = None) -> list[dict]:
    rows, src = [], dump
    raw = root / "out" / name / "raw" / "threads.parquet"
    for stage in STAGES:
        out = root / "out" / name / stage
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        stats = run_stage(stage, src, raw, out, max_record_bytes)
        rows.append({"dump": name, "stage": stage, **stats})
        r = rows[-1]
        print(f"  {name:<24} {stage:<9} " + (f"error: {r['error']}" if "error" in r else
              f"in {r['in']:>6} out {r['out']:>6} rejected {r['rejected']:>4} {r['seconds']:7.1f} s "
              f"{r['peak_rss_mib']:7.1f} MiB {','.join(r['reasons'])}"), flush=True)
        if "error" in r:
            break
        src = out / ("threads.parquet" if stage != "augmented" else "samples.parquet")
    return rows


def table(rows: list[dict]) -> str:
    normal = {r["stage"]: r["peak_rss_mib"] for r in rows if r["dump"] == "normal.jsonl"}
    lines = ["| dump | stage | in | out | rejected | reasons | seconds | peak RSS MiB | x normal |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dump']} | {r['stage']} | | | | error: {r['error']} | | {r['peak_rss_mib']:.0f} | "
                         f"{r['peak_rss_mib'] / normal[r['stage']]:.2f} |")
            continue
        lines.append(f"| {r['dump']} | {r['stage']} | {r['in']} | {r['out']} | {r['rejected']} | "
                     f"{', '.join(r['reasons'])} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['peak_rss_mib'] / normal[r['stage']]:.2f} |")
    worst = max(r["peak_rss_mib"] for r in rows if "@" not in r["dump"])
    raised = [r["peak_rss_mib"] for r in rows if "@" in r["dump"]]
    verdict = "met" if worst < GOAL_MIB else "NOT met"
    lines += ["", f"highest peak RSS at the default limits: {worst:.0f} MiB (goal < {GOAL_MIB} MiB): {verdict}"]
    if raised:
        lines.append(f"with max_record_bytes raised to let the long post through: {max(raised):.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2000, help="threads of the normal dump")
    parser.add_argument("--line-gb", type=float, default=2.0, help="size of the single long line, GB")
    parser.add_argument("--post-mb", type=float, default=50.0, help="size of the one long post, MB")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="gcrp-hostile-"))
    root.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        start = time.perf_counter()
        normal = root / "normal.jsonl"
        generate_corpus(normal, args.threads)
        line_gz = root / "one_line_2gb.jsonl.gz"
        write_long_line_gz(line_gz, int(args.line_gb * 1e9))
        post = root / "post_50mb.jsonl"
        write_long_post(normal, post, int(args.post_mb * 1e6))
        print(f"dumps written in {time.perf_counter() - start:.0f} s: normal {normal.stat().st_size / MiB:.0f} MiB, "
              f"long line {args.line_gb:g} GB in {line_gz.stat().st_size / MiB:.1f} MiB of gzip, "
              f"long post {post.stat().st_size / MiB:.0f} MiB", flush=True)
        rows = []
        rows += chain("normal.jsonl", normal, root)
        rows += chain("one_line_2gb.jsonl.gz", line_gz, root)
        rows += chain("post_50mb.jsonl", post, root)
        rows += chain("post_50mb.jsonl @64MiB", post, root, max_record_bytes=64 * MiB)
        print()
        print(table(rows))
        print(f"\ntotal wall time {time.perf_counter() - began:.0f} s")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
