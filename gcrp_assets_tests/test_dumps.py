import gzip

import pytest

from gcrp_assets.lib.ingest.contract import DumpReadError
from gcrp_assets.lib.ingest.dumps import find_dumps, read_dump
from gcrp_assets_tests.factories import thread, write_jsonl


def test_good_and_bad_lines_are_all_accounted_for_with_file_and_line(tmp_path):
    records = [thread("a", 2, 6), {"thread_id": "no-posts"}, thread("b", 3, 7), thread("a", 2, 6)]
    path = write_jsonl(tmp_path / "dump.jsonl", records, {2: '{"thread_id": "cut", "posts": [', 5: "[1, 2]"})
    contents = read_dump(path)
    assert [t["thread_id"] for t in contents.threads] == ["a", "b"]
    by_line = {r["line"]: r for r in contents.rejects}
    assert by_line[2]["reason"] == "invalid_thread" and "posts" in by_line[2]["detail"]
    assert by_line[3]["reason"] == "invalid_json" and by_line[3]["detail"].startswith("dump.jsonl:3:")
    assert by_line[5]["reason"] == "duplicate_thread_id"
    assert by_line[6]["reason"] == "invalid_thread"
    assert contents.lines == len(contents.threads) + len(contents.rejects) == 6
    assert contents.threads[1]["line"] == 4 and contents.threads[1]["dump"] == "dump.jsonl"


def test_post_without_author_rejects_the_thread_naming_the_post(tmp_path):
    bad = thread("x", 2, 6)
    del bad["posts"][3]["author"]
    contents = read_dump(write_jsonl(tmp_path / "d.jsonl", [bad]))
    assert not contents.threads
    assert "posts[3]" in contents.rejects[0]["detail"] and "author" in contents.rejects[0]["detail"]


def test_gzip_dump_reads_like_plain(tmp_path):
    plain = write_jsonl(tmp_path / "p.jsonl", [thread("a", 2, 6)])
    packed = tmp_path / "p2.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_dump(packed).threads[0]["posts"] == read_dump(plain).threads[0]["posts"]


def test_unreadable_dump_fails_naming_the_file(tmp_path):
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DumpReadError, match="broken.jsonl.gz"):
        read_dump(broken)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    with pytest.raises(DumpReadError, match="binary.jsonl.*line 1"):
        read_dump(binary)


def test_find_dumps_lists_only_dumps_in_order(tmp_path):
    for name in ["b.jsonl", "a.jsonl.gz", "notes.txt"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in find_dumps(tmp_path)] == ["a.jsonl.gz", "b.jsonl"]
    with pytest.raises(DumpReadError, match="does not exist"):
        find_dumps(tmp_path / "missing")
