"""The inbox sensor, the weekly refresh, the automation conditions and the run queue's settings."""

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef

from gcrp_assets.defs import automation
from gcrp_assets.defs.automation import advance_cursor, cursor_digests, inbox_sensor, weekly_data_refresh
from gcrp_assets.lib.ingest.dumps import dump_digest
from gcrp_assets.orchestration.resources import DumpInbox
from gcrp_assets.definitions import build_defs
from gcrp_assets_tests.factories import thread, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _tick(instance, inbox, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"inbox": DumpInbox(path=str(inbox))})
    return inbox_sensor(context)


def test_sensor_registers_new_dumps_once_and_follows_content_not_mtime(tmp_path):
    inbox = tmp_path / "inbox"
    write_jsonl(inbox / "a.jsonl", [thread("t1", 2, 6)])
    write_jsonl(inbox / "b.jsonl", [thread("t2", 3, 7)])
    with dg.instance_for_test() as instance:
        first = _tick(instance, inbox)
        assert isinstance(first, dg.SensorResult)
        assert sorted(r.partition_key for r in first.run_requests) == ["a.jsonl", "b.jsonl"]
        assert first.dynamic_partitions_requests[0].partition_keys == ["a.jsonl", "b.jsonl"]
        run_keys = {r.partition_key: r.run_key for r in first.run_requests}
        instance.add_dynamic_partitions("dumps", ["a.jsonl", "b.jsonl"])  # what the daemon does with the request

        # Nothing new: skipped. Touching a file without changing it is no change.
        (inbox / "a.jsonl").touch()
        touched = _tick(instance, inbox, first.cursor)
        assert touched.skip_reason and not touched.run_requests

        # A changed dump is requested again under a new run key, without re-registering its partition.
        write_jsonl(inbox / "a.jsonl", [thread("t1", 2, 8)])
        second = _tick(instance, inbox, touched.cursor)
        assert [r.partition_key for r in second.run_requests] == ["a.jsonl"]
        assert second.run_requests[0].run_key != run_keys["a.jsonl"]
        assert not second.dynamic_partitions_requests

        # A removed dump is reported, not silently forgotten.
        (inbox / "b.jsonl").unlink()
        third = _tick(instance, inbox, second.cursor)
        assert not third.run_requests and "removed: b.jsonl" in third.skip_reason.skip_message


def _hashed(monkeypatch) -> list[str]:
    """The names of the dumps the sensor reads in full from now on."""
    calls = []

    def counting(path, inbox=None):
        calls.append(path.name)
        return dump_digest(path, inbox)

    monkeypatch.setattr(automation, "dump_digest", counting)
    return calls


def test_sensor_hashes_only_dumps_whose_size_or_times_changed_and_records_the_content_hash(tmp_path, monkeypatch):
    inbox = tmp_path / "inbox"
    write_jsonl(inbox / "a.jsonl", [thread("t1", 2, 6)])
    write_jsonl(inbox / "b.jsonl", [thread("t2", 3, 7)])
    export = inbox / "export"  # a folder dump (as a SillyTavern export): its files and subfolders count
    write_jsonl(export / "chats" / "c.jsonl", [thread("t3", 2, 6)])
    hashed = _hashed(monkeypatch)
    with dg.instance_for_test() as instance:
        first = _tick(instance, inbox)
        assert sorted(hashed) == ["a.jsonl", "b.jsonl", "export"]
        cursor = json.loads(first.cursor)
        # The cursor holds each dump's content hash (as `dump_digest` computes it) beside its size and times.
        assert {name: entry["sha256"] for name, entry in cursor.items()} == {
            name: dump_digest(inbox / name) for name in ("a.jsonl", "b.jsonl", "export")}
        assert cursor["a.jsonl"]["stat"][:2] == [1, (inbox / "a.jsonl").stat().st_size]

        hashed.clear()
        quiet = _tick(instance, inbox, first.cursor)
        assert hashed == [] and quiet.skip_reason and quiet.cursor == first.cursor

        # Touched, same content: hashed once, no run, and not hashed again on the tick after.
        (inbox / "a.jsonl").touch()
        touched = _tick(instance, inbox, quiet.cursor)
        assert hashed == ["a.jsonl"] and not touched.run_requests
        hashed.clear()
        assert not _tick(instance, inbox, touched.cursor).run_requests and hashed == []

        # Same size, mtime set back: the ctime still tells, and the new content is requested.
        b = inbox / "b.jsonl"
        before = b.stat()
        b.write_bytes(b.read_bytes().replace(b"t2", b"t9"))
        os.utime(b, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert b.stat().st_size == before.st_size
        edited = _tick(instance, inbox, touched.cursor)
        assert hashed == ["b.jsonl"] and [r.partition_key for r in edited.run_requests] == ["b.jsonl"]
        assert json.loads(edited.cursor)["b.jsonl"]["sha256"] == dump_digest(b)

        # A file added deep inside a folder dump changes the folder's stat.
        hashed.clear()
        write_jsonl(export / "chats" / "d.jsonl", [thread("t4", 2, 6)])
        grown = _tick(instance, inbox, edited.cursor)
        assert hashed == ["export"] and [r.partition_key for r in grown.run_requests] == ["export"]


def test_cursor_of_the_cli_and_of_earlier_versions_is_read_and_hashed_once(tmp_path, monkeypatch):
    """`advance_cursor` (what `python -m gcrp_assets.cli run` records) and a cursor of earlier versions
    ({dump: hash}) carry no stat: each dump is hashed once, not requested again when unchanged."""
    inbox = tmp_path / "inbox"
    write_jsonl(inbox / "a.jsonl", [thread("t1", 2, 6)])
    digest = dump_digest(inbox / "a.jsonl")
    hashed = _hashed(monkeypatch)
    with dg.instance_for_test() as instance:
        for cursor in (advance_cursor(None, {"a.jsonl": digest}), json.dumps({"a.jsonl": digest})):
            assert cursor_digests(cursor) == {"a.jsonl": digest}
            hashed.clear()
            first = _tick(instance, inbox, cursor)
            assert hashed == ["a.jsonl"] and not first.run_requests
            hashed.clear()
            _tick(instance, inbox, first.cursor)
            assert hashed == []
        # A recorded stat survives a CLI run that found the same content, and is dropped for new content.
        stat = json.loads(first.cursor)["a.jsonl"]["stat"]
        assert json.loads(advance_cursor(first.cursor, {"a.jsonl": digest}))["a.jsonl"] == {"sha256": digest,
                                                                                           "stat": stat}
        assert json.loads(advance_cursor(first.cursor, {"a.jsonl": "0" * 64}))["a.jsonl"] == {"sha256": "0" * 64}


def test_weekly_refresh_requests_only_the_per_dump_stages_and_automation_follows():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("dumps", ["a.jsonl", "b.jsonl"])
        context = dg.build_schedule_context(instance=instance,
                                            scheduled_execution_time=dt.datetime(2026, 11, 23, 3, tzinfo=dt.timezone.utc))
        requests = list(weekly_data_refresh(context))
        graph = build_defs().resolve_asset_graph()
    assert [r.partition_key for r in requests] == ["a.jsonl", "b.jsonl"]
    assert len({r.run_key for r in requests}) == 2
    assert all(r.asset_selection is None for r in requests)  # the schedule's target: the per-dump stages
    targeted = weekly_data_refresh.target.resolvable_to_job.selection.resolve(graph)
    assert {key.to_user_string() for key in targeted} == {"raw_threads", "filtered_threads", "augmented_prompts"}
    # What follows a refreshed dump is automation's, once its data changed.
    assert graph.get(dg.AssetKey("tokenized_parquet")).automation_condition.get_label() == "upstream data changed"


def test_training_never_automates_and_the_report_follows_the_checkpoint():
    with dg.instance_for_test():  # resolving definitions consults the current instance
        graph = build_defs().resolve_asset_graph()
    condition = lambda key: graph.get(dg.AssetKey(key)).automation_condition
    assert condition("lora_checkpoint") is None
    assert condition("raw_threads") is None  # new dumps arrive through the inbox sensor
    for key in ("filtered_threads", "augmented_prompts", "tokenized_parquet"):
        assert condition(key).get_label() == "upstream data changed"
    assert condition("eval_report").get_label() == "new checkpoint"


def test_gpu_pool_holds_every_asset_that_may_use_a_gpu():
    """Training and evaluation load models on the GPU when there is one. The sheet rewrite of
    augmented_prompts runs its model on the CPU (`lib.prompts.sheet_rewrite`), so the per-dump stages stay
    out: at run granularity a dump run in the pool would queue behind every training."""
    with dg.instance_for_test():
        graph = build_defs().resolve_asset_graph()
    in_pool = {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).pools}
    assert in_pool == {"lora_checkpoint", "eval_report"}
    assert all(graph.get(dg.AssetKey(key)).pools == {"gpu"} for key in in_pool)


def test_instance_settings_queue_runs_for_a_laptop(tmp_path):
    """deploy/dagster.yaml: few runs at once, one dump run at a time, and the gpu pool enforced on whole runs,
    so a training run waits in the queue rather than in a started process."""
    from dagster._core.instance.config import PoolGranularity

    shutil.copy(ROOT / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
        settings = instance.get_concurrency_config()
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert settings.pool_config.pool_granularity == PoolGranularity.RUN
    assert settings.pool_config.default_pool_limit == 1
    assert settings.run_queue_config.max_concurrent_runs == 2
    assert settings.run_queue_config.tag_concurrency_limits == [{"key": "dagster/partition", "limit": 1}]


def test_the_report_follows_a_new_checkpoint_once_and_not_after_a_run_that_made_both():
    """`training_chain` makes the checkpoint and then the report: automation must not run the report again.
    A checkpoint made alone is followed by one request, not one per tick."""
    from gcrp_assets.defs.automation import follow_new_checkpoint

    version = {"lora_checkpoint": "v1"}

    @dg.asset(name="lora_checkpoint")
    def checkpoint():
        return dg.MaterializeResult(data_version=dg.DataVersion(version["lora_checkpoint"]))

    @dg.asset(name="eval_report", deps=[checkpoint], automation_condition=follow_new_checkpoint())
    def report():
        return dg.MaterializeResult(data_version=dg.DataVersion("r"))

    def requested(instance, cursor):
        result = dg.evaluate_automation_conditions(defs=[checkpoint, report], instance=instance, cursor=cursor)
        return result.total_requested, result.cursor

    with dg.instance_for_test() as instance:
        n, cursor = requested(instance, None)
        assert n == 0  # nothing materialized yet
        assert dg.materialize([checkpoint, report], instance=instance).success  # the chain: both in one run
        n, cursor = requested(instance, cursor)
        assert n == 0
        version["lora_checkpoint"] = "v2"
        assert dg.materialize([checkpoint], instance=instance).success  # a new checkpoint alone
        n, cursor = requested(instance, cursor)
        assert n == 1
        n, cursor = requested(instance, cursor)
        assert n == 0  # requested once; the next tick does not ask again
