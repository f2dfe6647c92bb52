"""The inbox is a boundary: a partition key is a name in it; nothing outside it is read, hashed or written to.

A partition key can be added by anyone with the Dagster UI, so `../outside/secret.jsonl` must not read a
file outside the inbox nor put artifacts outside the artifact root; a symbolic link in the inbox (the dump
itself or a file inside a dump folder) that resolves outside it is refused wherever a dump is listed,
fingerprinted or resolved for reading.
"""

import os

import dagster as dg
import pytest

from gcrp_assets.defs.automation import dump_digests, inbox_sensor
from gcrp_assets.orchestration.resources import ArtifactStore, DumpInbox
from gcrp_assets.lib.ingest.contract import DumpReadError
from gcrp_assets.lib.ingest.dumps import dump_digest, find_dumps
from gcrp_assets.lib.hashing import sha256_tree
from gcrp_assets.lib.ingest.inbox import (DumpNotInInbox, InboxError, dump_files, resolve_dump,
                                          validate_dump_name)
from gcrp_assets_tests.factories import thread, write_jsonl

SECRET = "SECRET-CONTENT-0451"


@pytest.fixture
def layout(tmp_path):
    """An inbox with one good dump, and a secret file next to it (outside the inbox)."""
    inbox = tmp_path / "inbox"
    write_jsonl(inbox / "good.jsonl", [thread("t1", 2, 6)])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(f'{{"thread_id": "{SECRET}", "posts": []}}\n', "utf-8")
    return inbox, outside


@pytest.mark.parametrize("name", ["good.jsonl", "rpguild dump.csv.gz", "st_export", "a..b.jsonl", "Ünïcode.tsv"])
def test_plain_names_are_valid(name):
    assert validate_dump_name(name) == name


@pytest.mark.parametrize("name", ["", "../outside/secret.jsonl", "..", ".", "a/b.jsonl", "a\\b.jsonl",
                                  "/etc/passwd", ".hidden.jsonl", "nul\0.jsonl", "line\nbreak.jsonl",
                                  "x" * 300, None, 7])
def test_unsafe_names_are_refused(name):
    with pytest.raises(InboxError):
        validate_dump_name(name)


def test_resolve_dump_refuses_traversal_missing_and_special_entries(layout):
    inbox, outside = layout
    assert resolve_dump(inbox, "good.jsonl") == inbox / "good.jsonl"
    with pytest.raises(InboxError, match="path separator"):
        resolve_dump(inbox, "../outside/secret.jsonl")
    with pytest.raises(DumpNotInInbox):
        resolve_dump(inbox, "gone.jsonl")
    os.mkfifo(inbox / "pipe.jsonl")  # opening it would block forever
    with pytest.raises(InboxError, match="neither a file nor a folder"):
        resolve_dump(inbox, "pipe.jsonl")


def test_links_outside_the_inbox_are_refused_links_inside_are_fine(layout):
    inbox, outside = layout
    (inbox / "leak.jsonl").symlink_to(outside / "secret.jsonl")
    (inbox / "latest.jsonl").symlink_to(inbox / "good.jsonl")
    export = inbox / "st_export"
    (export / "chats").mkdir(parents=True)
    (export / "chats" / "chat.jsonl").write_text('{"mes": "hi", "name": "A"}\n', "utf-8")
    assert resolve_dump(inbox, "latest.jsonl") == inbox / "latest.jsonl"
    assert [p.name for p in dump_files(export, inbox)] == ["chat.jsonl"]
    assert resolve_dump(inbox, "st_export") == export

    with pytest.raises(InboxError, match="outside the inbox") as refused:
        resolve_dump(inbox, "leak.jsonl")
    assert SECRET not in str(refused.value) and str(outside) not in str(refused.value)
    (export / "chats" / "stolen.jsonl").symlink_to(outside / "secret.jsonl")
    with pytest.raises(InboxError, match=r"st_export/chats/stolen\.jsonl.*outside the inbox"):
        resolve_dump(inbox, "st_export")
    with pytest.raises(InboxError):
        list(dump_files(export, inbox))
    (export / "chats" / "stolen.jsonl").unlink()
    (export / "linked_dir").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InboxError, match="linked_dir"):
        resolve_dump(inbox, "st_export")
    assert resolve_dump(inbox, "st_export", allow_outside_links=True) == export  # an operator's explicit choice


def test_find_dumps_and_fingerprints_never_follow_links_out(layout):
    inbox, outside = layout
    (inbox / "leak.jsonl").symlink_to(outside / "secret.jsonl")
    (inbox / "latest.jsonl").symlink_to(inbox / "good.jsonl")
    (inbox / "escape").symlink_to(outside, target_is_directory=True)
    export = inbox / "export"
    export.mkdir()
    (export / "chat.jsonl").write_text('{"mes": "hi"}\n', "utf-8")
    (export / "stolen.jsonl").symlink_to(outside / "secret.jsonl")
    refused = []
    assert [p.name for p in find_dumps(inbox, on_refused=lambda p, why: refused.append(p.name))] == [
        "good.jsonl", "latest.jsonl"]
    assert sorted(refused) == ["escape", "export", "leak.jsonl"]

    with pytest.raises(DumpReadError, match="outside"):
        dump_digest(export)
    with pytest.raises(DumpReadError, match="outside"):
        dump_digest(inbox / "leak.jsonl")
    assert dump_digest(inbox / "latest.jsonl") == dump_digest(inbox / "good.jsonl")
    with pytest.raises(ValueError, match="stolen"):
        sha256_tree(export, inside=inbox)
    sha256_tree(export)  # without a boundary (a model snapshot linking into its blob store) links are followed

    warnings = []
    digests = dump_digests(DumpInbox(path=str(inbox)), on_refused=lambda name, why: warnings.append(name))
    assert sorted(digests) == ["good.jsonl", "latest.jsonl"] and sorted(warnings) == ["escape", "export", "leak.jsonl"]


def test_sensor_registers_only_dumps_inside_the_inbox(layout):
    inbox, outside = layout
    (inbox / "leak.jsonl").symlink_to(outside / "secret.jsonl")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"inbox": DumpInbox(path=str(inbox))})
        result = inbox_sensor(context)
    assert [r.partition_key for r in result.run_requests] == ["good.jsonl"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["good.jsonl"]


def test_a_partition_key_from_the_ui_cannot_read_or_write_outside(layout, tmp_path):
    inbox, outside = layout
    resource = DumpInbox(path=str(inbox))
    assert resource.dump_path("good.jsonl") == inbox.resolve() / "good.jsonl"
    with pytest.raises(dg.Failure, match="refused") as failure:
        resource.dump_path("../outside/secret.jsonl")
    assert SECRET not in str(failure.value)
    with pytest.raises(dg.Failure, match="no longer in the inbox"):
        resource.dump_path("gone.jsonl")

    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    folder = store.dir_for("raw_threads", "0123456789abcdef" * 4, "good.jsonl")
    assert folder == (tmp_path / "artifacts").resolve() / "raw_threads" / "good.jsonl" / "0123456789abcdef"
    assert store.dir_for("eval_report", "ab" * 32) == (tmp_path / "artifacts").resolve() / "eval_report" / ("ab" * 8)
    for bad in ("../outside", "..", "a/b", "/tmp/x"):
        with pytest.raises(ValueError):
            store.dir_for("raw_threads", "0123456789abcdef" * 4, bad)
    with pytest.raises(ValueError):
        store.dir_for("raw_threads", "../../etc/passwd", "good.jsonl")
