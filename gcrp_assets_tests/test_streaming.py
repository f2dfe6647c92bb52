"""The streaming data stages (`lib.stages`, `lib.parquet.RowWriter`, `dumps.iter_dump`): same rows as the
whole-dump reference computed in memory, byte-identical files run to run and across batch sizes' reruns,
and readers that hand out threads before the dump is read to its end."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest

from gcrp_assets.lib.clean import stage as clean_stage

from gcrp_assets.lib.ingest import stage as ingest_stage

from gcrp_assets.lib.prompts import stage as prompt_stage

from gcrp_assets.lib import schemas
from gcrp_assets.lib.clean.cleaning import clean_thread, dump_scrubber
from gcrp_assets.lib.clean.dedup import find_duplicates
from gcrp_assets.lib.ingest.dumps import iter_dump, read_dump
from gcrp_assets.lib.clean.filters import FilterRules, rejection_reason
from gcrp_assets.lib.parquet import RowWriter, read_rows
from gcrp_assets.lib.prompts.samples import build_samples, load_system_template
from gcrp_assets.lib.prompts.sheets import SheetTemplate
from gcrp_assets_tests.factories import thread, write_jsonl
from gcrp_assets_tests.test_importers import write_delimited


def _corpus(tmp_path):
    records = [thread(f"t{k:02d}", 2 + k % 3, 6 + k % 4) for k in range(14)]
    records[5] = copy.deepcopy(records[2]) | {"thread_id": "t05"}  # exact copy of t02
    near = copy.deepcopy(records[3]) | {"thread_id": "t07"}  # one word changed: near copy of t03
    near["posts"][0]["text"] = near["posts"][0]["text"].replace(" near ", " by ", 1)
    records[7] = near
    records[9] = thread("t09", 1, 8)  # one character: rejected by the filters
    return write_jsonl(tmp_path / "dump.jsonl", records, raw_lines={4: "{not json"})


def _table(rows, schema):
    return pa.Table.from_pylist(rows, schema=schema).to_pylist()


def _reference(path):
    """What the stages computed before they streamed: everything in memory."""
    contents = read_dump(path)
    scrubber = dump_scrubber(contents.threads)
    candidates, rejects = [], []
    for t in contents.threads:
        cleaned = clean_thread(t, scrubber)
        verdict = rejection_reason(cleaned, FilterRules())
        if verdict:
            rejects.append(clean_stage.filter_reject(t, *verdict))
        else:
            candidates.append((t, cleaned))
    duplicates = {d.thread_id: d for d in find_duplicates([c for _, c in candidates])}
    kept = []
    for t, cleaned in candidates:
        if t["thread_id"] in duplicates:
            d = duplicates[t["thread_id"]]
            rejects.append(clean_stage.filter_reject(t, d.reason, d.detail))
        else:
            kept.append(cleaned)
    rejects.sort(key=lambda r: r["line"])
    return contents, kept, rejects


@pytest.mark.parametrize("batch", [1, 3, 512])
def test_stages_stream_to_the_in_memory_result(tmp_path, batch):
    path = _corpus(tmp_path)
    contents, kept, rejects = _reference(path)
    out = {name: tmp_path / f"{name}-{batch}" for name in ("raw", "filtered", "augmented")}
    for folder in out.values():
        folder.mkdir()
    raw = ingest_stage.run_raw(path, out["raw"], batch=batch)
    assert (raw["lines"], raw["threads"], raw["rejected_lines"]) == (15, 14, 1)
    assert read_rows(out["raw"] / "threads.parquet") == _table(contents.threads, schemas.RAW_THREADS)
    assert read_rows(out["raw"] / "rejects.parquet") == _table(contents.rejects, schemas.REJECTS)

    filtered = clean_stage.run_filtered(out["raw"] / "threads.parquet", out["filtered"], batch=batch)
    assert filtered["reasons"] == {"too_few_characters": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert filtered["threads_kept"] + filtered["threads_rejected"] == filtered["threads_in"] == 14
    assert read_rows(out["filtered"] / "threads.parquet") == _table(kept, schemas.FILTERED_THREADS)
    assert read_rows(out["filtered"] / "rejects.parquet") == _table(rejects, schemas.REJECTS)
    assert filtered["threads_with_handle_leaks"] == 0
    assert sorted(p.name for p in out["filtered"].iterdir()) == ["rejects.parquet", "threads.parquet"]  # no temp

    template, system = SheetTemplate.load(), load_system_template()
    augmented = prompt_stage.run_augmented(out["filtered"] / "threads.parquet", out["raw"] / "threads.parquet",
                                     out["augmented"], template, system, batch=batch)
    expected = [s for t in read_rows(out["filtered"] / "threads.parquet") for s in build_samples(t, template, system)]
    assert read_rows(out["augmented"] / "samples.parquet") == _table(expected, schemas.SAMPLES)
    assert augmented["samples"] == len(expected) and augmented["samples_with_handle_leaks"] == 0


def test_stage_outputs_are_byte_identical_run_to_run(tmp_path):
    path = _corpus(tmp_path)
    files = []
    for run in ("a", "b"):
        raw, filtered = tmp_path / run / "raw", tmp_path / run / "filtered"
        raw.mkdir(parents=True), filtered.mkdir()
        ingest_stage.run_raw(path, raw, batch=4)
        clean_stage.run_filtered(raw / "threads.parquet", filtered, batch=4)
        files.append([(raw / f).read_bytes() for f in ("threads.parquet", "rejects.parquet")] +
                     [(filtered / f).read_bytes() for f in ("threads.parquet", "rejects.parquet")])
    assert files[0] == files[1]


def test_row_writer_is_atomic_and_deterministic(tmp_path):
    rows = [{"dump": "d", "file": "d", "line": i, "thread_id": str(i), "stage": "s", "reason": "r", "detail": "x" * i,
             "record": "{}", "evidence": None} for i in range(10)]
    for name in ("a.parquet", "b.parquet"):
        with RowWriter(tmp_path / name, schemas.REJECTS, batch=3) as writer:
            writer.extend(rows)
            assert not (tmp_path / name).exists()  # only the .tmp until closed
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert read_rows(tmp_path / "a.parquet") == rows
    with pytest.raises(RuntimeError):
        with RowWriter(tmp_path / "c.parquet", schemas.REJECTS, batch=3) as writer:
            writer.extend(rows)
            raise RuntimeError("stage failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]
    with RowWriter(tmp_path / "empty.parquet", schemas.REJECTS):
        pass
    assert read_rows(tmp_path / "empty.parquet") == []


def test_canonical_reader_hands_out_threads_before_the_end(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [thread(f"t{k}", 2, 6) for k in range(3)])
    reader = iter_dump(path)
    records = iter(reader)
    kind, first = next(records)
    assert kind == "thread" and first["thread_id"] == "t0" and reader.stats.lines == 1  # one line read so far
    assert [r["thread_id"] for _, r in records] == ["t1", "t2"] and reader.stats.lines == 3


def test_post_table_streams_threads_in_order_once_their_rows_are_read(tmp_path):
    """Two passes: threads come out in order of first appearance as soon as their last row (or their
    sheets' last row) has been read; interleaved rows and late sheets still give the whole thread."""
    header = ["thread_id", "thread_type", "author", "character", "message"]
    rows = [
        ["A", "IC", "ann", "Ash", "Ash opens the gate."],
        ["B", "IC", "bob", "Bex", "Bex waits at the ford."],
        ["A", "IC", "cat", "Cole", "Cole follows Ash inside."],
        ["C", "IC", "dan", "Dov", "Dov lights the lamp."],
        ["A", "Characters", "ann", "Ash", "Name: Ash\nAge: 30"],  # A's sheet after its posts
        ["C", "IC", "eve", "Ena", "Ena trims the wick."],
        ["Z", "Characters", "zed", "Zor", "Name: Zor"],  # sheets without posts: no_posts
    ]
    path = write_delimited(tmp_path / "forum.csv", header, rows, ",")
    reader = iter_dump(path)
    out = list(reader)
    assert [(k, r["thread_id"]) for k, r in out] == [("thread", "A"), ("thread", "B"), ("thread", "C"),
                                                    ("reject", "Z")]
    a = out[0][1]
    assert [p["character"] for p in a["posts"]] == ["Ash", "Cole"]
    assert [c["name"] for c in a["characters"]] == ["Ash"] and a["line"] == 1
    assert reader.stats.lines == 4 and reader.stats.rows == 7
    whole = read_dump(path)
    assert whole.threads == [r for k, r in out if k == "thread"]
    assert whole.rejects == [r for k, r in out if k == "reject"]

    # Contiguous threads (the usual forum dump): each thread is handed out while later rows are unread.
    contiguous = [["T%d" % (i // 2), "IC", "u%d" % i, "N%d" % i, "post %d" % i] for i in range(10)]
    path = write_delimited(tmp_path / "contiguous.csv", header, contiguous, ",")
    reader = iter_dump(path)
    records = iter(reader)
    assert next(records)[1]["thread_id"] == "T0"
    assert [r["thread_id"] for _, r in records] == ["T1", "T2", "T3", "T4"]


def test_raw_stage_failure_leaves_no_file(tmp_path):
    from gcrp_assets.lib.ingest.contract import DumpReadError

    path = tmp_path / "bad.jsonl"
    path.write_text("{nope\n{also not json\n", "utf-8")
    folder = tmp_path / "raw"
    folder.mkdir()
    with pytest.raises(DumpReadError):
        ingest_stage.run_raw(path, folder)
    assert list(folder.iterdir()) == []
