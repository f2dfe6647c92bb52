"""Hostile and broken dumps through `ingest_stage.run_raw`, the function the raw_threads asset calls.

Each case builds one bad dump (deep nesting, a 5,000-digit integer, a line of millions of empty objects,
a 200 MB line inside a small `.gz`, a truncated `.gz`, bytes that are not UTF-8, a Parquet list cell, a huge
CSV field, an empty file, binary junk, ...) and checks, for the run as the asset runs it:

- it either succeeds with every bad record in the rejects, each naming the file, the line (or row) and the
  reason, or fails with a message naming the file and the line;
- records in = threads + rejects (`lines` of run_raw);
- no detail or error message quotes the dump's content (every bad record carries a marker that must not
  show up);
- peak memory is bounded: each case runs in a process of its own, forked from one that has imported the
  pipeline (so the interpreter is loaded once), and reports its peak RSS (`VmHWM` of /proc/self/status);
  it may exceed the peak of the same run on a small good dump (`control.jsonl`) by at most the case's
  `budget_mib`, which holding the bad record whole would exceed.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gcrp_assets_tests.factories import thread

MARK = "NOT-FOR-LOGS-7c1e"  # in every bad record: must never appear in a detail or an error message
MiB = 1 << 20


@dataclass
class Case:
    name: str  # the dump's file name
    max_record_bytes: int | None = None  # None: the default (lines.MAX_RECORD_BYTES, 16 MiB)
    budget_mib: int = 32  # peak RSS allowed over the control case's
    expect: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# The child: imports once, then forks one process per case


_CHILD = textwrap.dedent("""
    import json, os, sys, traceback
    from pathlib import Path

    import pyarrow.parquet as pq
    from gcrp_assets.lib.ingest import lines
    from gcrp_assets.lib.ingest import stage as ingest_stage

    def status_kib(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])

    def run(case, out):
        if case["max_record_bytes"]:
            lines.MAX_RECORD_BYTES = case["max_record_bytes"]
        folder = Path(case["folder"])
        folder.mkdir(parents=True)
        result = {"name": case["name"]}
        try:
            stats = ingest_stage.run_raw(Path(case["path"]), folder)
            result["stats"] = {k: stats[k] for k in ("layout", "lines", "threads", "rejected_lines")}
            threads = pq.read_table(folder / "threads.parquet", columns=["thread_id"])
            result["thread_ids"] = threads.column(0).to_pylist()
            result["rejects"] = pq.read_table(folder / "rejects.parquet",
                                              columns=["dump", "file", "line", "reason", "detail"]).to_pylist()
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc()[-2000:]
        result["hwm_mib"] = status_kib("VmHWM") / 1024
        Path(out).write_text(json.dumps(result))

    cases = json.loads(sys.stdin.read())
    results = []
    for i, case in enumerate(cases):
        out = case["folder"] + ".json"
        pid = os.fork()
        if pid == 0:
            try:
                run(case, out)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        results.append(json.loads(Path(out).read_text()))
    print(json.dumps(results))
""")


def run_cases(tmp: Path, cases: list[Case]) -> dict[str, dict]:
    payload = [{"name": c.name, "path": str(tmp / c.name), "folder": str(tmp / "out" / c.name),
                "max_record_bytes": c.max_record_bytes} for c in cases]
    done = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(payload), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    return {r["name"]: r for r in json.loads(done.stdout.strip().splitlines()[-1])}


# ---------------------------------------------------------------------------------------------------
# The bad dumps


def _good(i: int) -> str:
    return json.dumps(thread(f"t{i}", 2, 6))


def _jsonl(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), "utf-8")


def _gzip_stream(path: Path, pieces) -> None:
    """A gzip file written from an iterable of byte pieces (never the whole text in memory)."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as packed:
        for piece in pieces:
            packed.write(piece)


def build(tmp: Path) -> list[Case]:
    _jsonl(tmp / "control.jsonl", [_good(i) for i in range(10)])
    cases = [Case("control.jsonl", expect={"threads": [f"t{i}" for i in range(10)], "rejects": {}})]

    # Deep nesting (RecursionError inside json.loads) and a 5,000-digit integer (int parsing limit).
    deep = '{"thread_id": "deep", "m": "%s", "pad": "%s", "posts": %s%s}' % (MARK, "p" * 2 * MiB, "[" * 100_000,
                                                                           "]" * 100_000)
    huge_int = '{"thread_id": "int", "m": "%s", "posts": [], "n": %s}' % (MARK, "7" * 5000)
    _jsonl(tmp / "nesting.jsonl", [_good(0), deep, _good(1), huge_int, _good(2)])
    cases.append(Case("nesting.jsonl", expect={"threads": ["t0", "t1", "t2"],
                                               "rejects": {2: "invalid_json", 4: "invalid_json"},
                                               "detail_has": {2: ["nested too deeply"], 4: ["digits"]}}))

    # A 4 MiB line of empty objects: within the record limit, but ~100 MB once parsed; refused unparsed.
    _jsonl(tmp / "containers.jsonl", [_good(0), '{"m": "%s", "x": [%s{}]}' % (MARK, "{}," * (4 * MiB // 3)), _good(1)])
    cases.append(Case("containers.jsonl", expect={"threads": ["t0", "t1"], "rejects": {2: "invalid_json"},
                                                  "detail_has": {2: ["objects and arrays"]}}))

    # A 200 MB single line inside a ~200 KB .gz, between good lines: rejected without being held, and the
    # stream stops at the expansion guard (the next lines are past it).
    line = b'{"thread_id": "bomb", "m": "' + MARK.encode() + b'", "posts": [{"author": "a", "text": "'
    _gzip_stream(tmp / "bomb.jsonl.gz", [(_good(0) + "\n").encode(), line]
                 + [b"x" * MiB] * 200 + [b'"}]}\n', (_good(1) + "\n").encode()])
    assert (tmp / "bomb.jsonl.gz").stat().st_size < 1 * MiB
    cases.append(Case("bomb.jsonl.gz", budget_mib=40,
                      expect={"threads": ["t0"], "rejects": {2: "record_too_large", 3: "decompression_limit"}}))

    # A 64 MB line in the middle of a plain file, a 1 MiB limit: skipped a block at a time, the rest is read.
    with open(tmp / "long_line.jsonl", "wb") as out:
        out.write((_good(0) + "\n").encode())
        out.write(b'{"thread_id": "long", "m": "' + MARK.encode() + b'", "posts": [{"author": "a", "text": "')
        for _ in range(64):
            out.write(b"y" * MiB)
        out.write(b'"}]}\n' + (_good(1) + "\n").encode())
    cases.append(Case("long_line.jsonl", max_record_bytes=MiB, budget_mib=24,
                      expect={"threads": ["t0", "t1"], "rejects": {2: "record_too_large"}}))

    # A truncated .gz of a multi-line dump: every thread before the break is kept, the break is one reject.
    body = "".join(_good(i) + "\n" for i in range(300)).encode()
    packed = gzip.compress(body, mtime=0)
    cut = packed[: len(packed) * 2 // 3]
    (tmp / "truncated.jsonl.gz").write_bytes(cut)
    recoverable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut).count(b"\n")
    cases.append(Case("truncated.jsonl.gz", expect={"truncated_after": recoverable}))

    # Bytes that are not UTF-8 on one line (the others are fine).
    (tmp / "latin1.jsonl").write_bytes((_good(0) + "\n").encode() + ('{"thread_id": "caf\xe9", "m": "%s"}\n' % MARK)
                                       .encode("latin-1") + (_good(1) + "\n").encode())
    cases.append(Case("latin1.jsonl", expect={"threads": ["t0", "t1"], "rejects": {2: "not_utf8"}}))

    # Empty files and binary junk: nothing to read; fails naming the file and line, or reads nothing.
    (tmp / "empty.jsonl").write_bytes(b"")
    cases.append(Case("empty.jsonl", expect={"threads": [], "rejects": {}}))
    (tmp / "empty.csv").write_bytes(b"")
    cases.append(Case("empty.csv", expect={"error": r"empty\.csv: line 1"}))
    junk = bytes(range(256)) * 400 + MARK.encode()
    (tmp / "junk.jsonl").write_bytes(junk)
    cases.append(Case("junk.jsonl", expect={"error": r"junk\.jsonl.*line 1"}))
    (tmp / "junk.csv.gz").write_bytes(gzip.compress(junk, mtime=0))
    cases.append(Case("junk.csv.gz", expect={"error": r"junk\.csv\.gz: line 1"}))

    # Post tables. A CSV with a 64 MB quoted field spanning lines, a 1 MiB limit: that row's thread is rejected
    # (its thread_id is still read from the start of the row), the rows after it are read in step.
    rows = ["thread_id,author,message", "a,u1,hello", "a,u2,there"]
    with open(tmp / "huge_field.csv", "wb") as out:
        out.write(("\n".join(rows) + "\n").encode())
        out.write(b'b,u3,"' + MARK.encode() + b" ")
        for _ in range(48):
            out.write(b"line of text, with a comma\n" * (MiB // 27))
        out.write(b'"\n')
        out.write(b'c,u4,"after the big one, still ""quoted"""\nd,u5,"multi\nline"\n')
    cases.append(Case("huge_field.csv", max_record_bytes=MiB, budget_mib=24,
                      expect={"threads": ["a", "c", "d"], "rejects": {3: "record_too_large"}}))
    # The same gzipped: the expansion guard applies to .csv.gz too (the field compresses ~1000x).
    _gzip_stream(tmp / "huge_field.csv.gz", [("\n".join(rows) + "\n").encode(), b'b,u3,"' + MARK.encode()]
                 + [b"line of text, with a comma\n" * (MiB // 27)] * 64 + [b'"\nc,u4,fine\n'])
    cases.append(Case("huge_field.csv.gz", max_record_bytes=MiB, budget_mib=24,
                      expect={"threads": ["a"], "rejects": {3: "record_too_large", 4: "decompression_limit"}}))
    # A truncated .csv.gz: the threads before the break are kept.
    table = "thread_id,author,message\n" + "".join(f"t{i},u{i},message number {i} {os.urandom(8).hex()}\n"
                                                   for i in range(3000))
    packed = gzip.compress(table.encode(), mtime=0)
    (tmp / "truncated.csv.gz").write_bytes(packed[: len(packed) // 2])
    cases.append(Case("truncated.csv.gz", expect={"csv_truncated": True}))
    # Not UTF-8 in one row.
    (tmp / "latin1.tsv").write_bytes(("thread_id\tauthor\tmessage\nt1\tu\tfine\nt2\tu\t%s caf\xe9\nt3\tu\tok\n" % MARK)
                                     .encode("latin-1"))
    cases.append(Case("latin1.tsv", expect={"threads": ["t1", "t3"], "rejects": {2: "not_utf8"}}))

    # Parquet: a list where text belongs (was stringified to "['u0']"), a struct message, a 40 MB cell.
    pq.write_table(pa.table({
        "thread_id": ["p1", "p1", "p2", "p3"], "author": ["u0", "u1", "u2", "u3"], "message": ["a", "b", "c", "d"],
        "character": pa.array([None, [MARK], None, None], pa.list_(pa.string())),
        "thread_tags": pa.array([["x"], ["x"], None, []], pa.list_(pa.string()))}), tmp / "list_cell.parquet")
    cases.append(Case("list_cell.parquet", expect={"threads": ["p2", "p3"], "rejects": {2: "invalid_thread"},
                                                   "detail_has": {2: ["'character'", "list<"]}}))
    pq.write_table(pa.table({"thread_id": ["p1", "p2"], "author": ["u0", "u1"],
                             "message": pa.array([{"m": MARK}, {"m": "x"}])}), tmp / "struct.parquet")
    cases.append(Case("struct.parquet", expect={"threads": [], "rejects": {1: "invalid_thread", 2: "invalid_thread"},
                                                "detail_has": {1: ["'message'", "struct<"]}}))
    pq.write_table(pa.table({"thread_id": ["p1", "p2", "p3"], "author": ["u0", "u1", "u2"],
                             "message": ["fine", MARK + "y" * (40 * MiB), "fine too"]}),
                   tmp / "huge_cell.parquet", row_group_size=1)
    cases.append(Case("huge_cell.parquet", budget_mib=24,
                      expect={"threads": ["p1", "p3"], "rejects": {2: "record_too_large"},
                              "detail_has": {2: ["'message'", "row group 1"]}}))
    return cases


# ---------------------------------------------------------------------------------------------------
# The checks


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    cases = build(tmp)
    results = run_cases(tmp, cases)
    return {c.name: (c, results[c.name]) for c in cases}


CASES = ["control.jsonl", "nesting.jsonl", "containers.jsonl", "bomb.jsonl.gz", "long_line.jsonl",
         "truncated.jsonl.gz", "latin1.jsonl", "empty.jsonl", "empty.csv", "junk.jsonl", "junk.csv.gz",
         "huge_field.csv", "huge_field.csv.gz", "truncated.csv.gz", "latin1.tsv", "list_cell.parquet",
         "struct.parquet", "huge_cell.parquet"]


@pytest.mark.parametrize("name", CASES)
def test_bad_dump_is_rejected_or_fails_naming_file_and_line(outcomes, name):
    case, result = outcomes[name]
    expect = case.expect
    growth = result["hwm_mib"] - outcomes["control.jsonl"][1]["hwm_mib"]
    assert growth < case.budget_mib, f"{name}: peak RSS grew {growth:.0f} MiB (budget {case.budget_mib} MiB)"

    if "error" in expect:
        assert "error" in result, f"{name}: expected a failure, got {result.get('stats')}"
        assert result["error"].startswith("DumpReadError: "), result.get("traceback")
        assert re.search(expect["error"], result["error"]), result["error"]
        assert MARK not in result["error"]
        return
    assert "error" not in result, result.get("traceback")
    stats, rejects = result["stats"], result["rejects"]
    assert stats["lines"] == stats["threads"] + stats["rejected_lines"] == len(result["thread_ids"]) + len(rejects)
    for reject in rejects:
        assert reject["dump"] == reject["file"] == name and reject["line"] >= 1
        assert reject["detail"].startswith(f"{name}:") and MARK not in reject["detail"], reject["detail"]
        assert reject["reason"]
    by_line = {r["line"]: r for r in rejects}

    if "truncated_after" in expect:
        kept = expect["truncated_after"]
        threads = result["thread_ids"]
        assert 0 < len(threads) <= kept and threads == [f"t{i}" for i in range(len(threads))]
        assert [(r["line"], r["reason"]) for r in rejects] == [(len(threads) + 1, "truncated")]
        assert f"line {len(threads) + 1}" in rejects[0]["detail"]
        return
    if expect.get("csv_truncated"):
        threads = result["thread_ids"]
        assert len(threads) > 100 and threads == [f"t{i}" for i in range(len(threads))]
        reasons = [r["reason"] for r in rejects]
        assert reasons == ["truncated", "truncated"]  # where it broke, and the thread of the last row before it
        broke = next(r for r in rejects if "breaks at line" in r["detail"])
        assert broke["line"] == len(threads) + 2
        return

    assert result["thread_ids"] == expect["threads"]
    assert sorted(by_line) == sorted(expect["rejects"]), rejects
    for line, reason in expect["rejects"].items():
        if reason is not None:
            assert by_line[line]["reason"] == reason, by_line[line]
    for line, words in expect.get("detail_has", {}).items():
        for word in words:
            assert word in by_line[line]["detail"], by_line[line]["detail"]


def test_max_record_bytes_of_a_run_reaches_every_layout(tmp_path):
    """run_raw's max_record_bytes (raw_threads' config) is what every reader enforces during that run."""
    from gcrp_assets.lib.parquet import read_rows
    from gcrp_assets.lib.ingest.stage import run_raw
    from gcrp_assets_tests import st_fixtures as st

    long_post = {"thread_id": "long", "posts": [{"author": "a", "text": "x" * 5000}]}
    short_post = {"thread_id": "short", "posts": [{"author": "a", "text": "fine"}]}
    jsonl = tmp_path / "inbox" / "d.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text(json.dumps(long_post) + "\n" + json.dumps(short_post) + "\n")
    table = tmp_path / "inbox" / "t.csv"
    table.write_text("thread_id,author,message\nlong,a," + "y" * 5000 + "\nshort,a,fine\n")
    folder = st.build_data_folder(tmp_path / "inbox", "current")
    for dump, expected_kept in ((jsonl, 1), (table, 1)):
        out = tmp_path / f"out-{dump.name}"
        out.mkdir()
        m = run_raw(dump, out, max_record_bytes=1000)
        assert (m["threads"], m["rejected_lines"]) == (expected_kept, 1)
        [reject] = read_rows(out / "rejects.parquet")
        assert reject["reason"] == "record_too_large"
        out_default = tmp_path / f"default-{dump.name}"
        out_default.mkdir()
        assert run_raw(dump, out_default)["rejected_lines"] == 0  # the default limit is back after the run
    out = tmp_path / "out-st"
    out.mkdir()
    m = run_raw(folder.path, out, max_record_bytes=100)  # every chat has a message line longer than 100 bytes
    assert m["threads"] == 0 and {r["reason"] for r in read_rows(out / "rejects.parquet")} == {"record_too_large"}
