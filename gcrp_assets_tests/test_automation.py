"""The inbox sensor, the weekly refresh and the automation conditions."""

import datetime as dt

import dagster as dg

from gcrp_assets.defs.automation import inbox_sensor, weekly_data_refresh
from gcrp_assets.orchestration.resources import DumpInbox
from gcrp_assets.definitions import build_defs
from gcrp_assets_tests.factories import thread, write_jsonl


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
        assert isinstance(_tick(instance, inbox, first.cursor), dg.SkipReason)

        # A changed dump is requested again under a new run key, without re-registering its partition.
        write_jsonl(inbox / "a.jsonl", [thread("t1", 2, 8)])
        second = _tick(instance, inbox, first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["a.jsonl"]
        assert second.run_requests[0].run_key != run_keys["a.jsonl"]
        assert not second.dynamic_partitions_requests

        # A removed dump is reported, not silently forgotten.
        (inbox / "b.jsonl").unlink()
        third = _tick(instance, inbox, second.cursor)
        assert isinstance(third, dg.SkipReason) and "removed: b.jsonl" in third.skip_message


def test_weekly_refresh_targets_data_stages_of_every_partition_and_never_training():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("dumps", ["a.jsonl", "b.jsonl"])
        context = dg.build_schedule_context(instance=instance,
                                            scheduled_execution_time=dt.datetime(2026, 11, 23, 3, tzinfo=dt.timezone.utc))
        requests = list(weekly_data_refresh(context))
    assert [r.partition_key for r in requests] == ["a.jsonl", "b.jsonl", None]
    selected = {key.to_user_string() for r in requests for key in r.asset_selection}
    assert selected == {"raw_threads", "filtered_threads", "augmented_prompts", "tokenized_parquet"}
    assert len({r.run_key for r in requests}) == 3


def test_training_never_automates_and_the_report_follows_the_checkpoint():
    with dg.instance_for_test():  # resolving definitions consults the current instance
        graph = build_defs().resolve_asset_graph()
    condition = lambda key: graph.get(dg.AssetKey(key)).automation_condition
    assert condition("lora_checkpoint") is None
    assert condition("raw_threads") is None  # new dumps arrive through the inbox sensor
    for key in ("filtered_threads", "augmented_prompts", "tokenized_parquet"):
        assert condition(key).get_label() == "upstream data changed"
    assert condition("eval_report").get_label() == "new checkpoint"
    assert graph.get(dg.AssetKey("lora_checkpoint")).pools == {"gpu"}
