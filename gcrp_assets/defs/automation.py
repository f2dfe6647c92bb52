"""How the pipeline runs by itself: the inbox sensor, the weekly data refresh, and declarative automation.

- `inbox_sensor` (running by default): a new or changed dump (by content hash, not mtime) registers its
  partition and requests a run of the per-dump data stages; the run key makes the request idempotent.
  A dump that disappears is reported in the sensor's log and tick, never deleted silently.
- `weekly_data_refresh` (stopped by default): re-materializes the data stages of every dump partition
  on Mondays 03:00 UTC. It never targets training.
- `data_automation` (running by default): data stages follow upstream *data version* changes (not mere
  re-materializations or code reloads); `eval_report` follows a new checkpoint. `lora_checkpoint` has
  no automation condition: training starts only when someone asks for it.
"""

import json
from typing import Callable

import dagster as dg

from gcrp_assets.orchestration.partitions import dumps
from gcrp_assets.orchestration.resources import DumpInbox
from gcrp_assets.lib.ingest.contract import DumpReadError
from gcrp_assets.lib.ingest.dumps import dump_digest, find_dumps
from gcrp_assets.lib.ingest.inbox import InboxError, validate_dump_name

A = dg.AutomationCondition

PER_DUMP_STAGES = dg.AssetSelection.assets("raw_threads", "filtered_threads", "augmented_prompts")
DATA_STAGES = PER_DUMP_STAGES | dg.AssetSelection.assets("tokenized_parquet")


def follow_upstream_data() -> dg.AutomationCondition:
    """Eager, but triggered by a changed upstream data version rather than by any new materialization."""
    return A.eager().replace("newly_updated", A.data_version_changed()).with_label("upstream data changed")


def follow_new_checkpoint() -> dg.AutomationCondition:
    return (
        A.any_deps_match(A.data_version_changed()).allow(dg.AssetSelection.assets("lora_checkpoint"))
        & ~A.any_deps_missing()
        & ~A.any_deps_in_progress()
        & ~A.in_progress()
    ).with_label("new checkpoint")


# Partitioned by `dumps`, which the job infers from its assets.
dump_stages_job = dg.define_asset_job(
    "dump_stages", selection=PER_DUMP_STAGES,
    description="raw_threads → filtered_threads → augmented_prompts for one dump partition.")

training_chain_job = dg.define_asset_job(
    "training_chain", selection=dg.AssetSelection.assets("base_model", "tokenized_parquet", "lora_checkpoint",
                                                         "eval_report"),
    description="The training set of all dump partitions, the adapter and its eval report.")


def dump_digests(inbox: DumpInbox, on_refused: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """Content hash of every dump in the inbox, by partition key.

    Only safe names become keys (`validate_dump_name`, checked again here because a key is forever): an
    entry whose name is not one, that links outside the inbox, or that holds such a link (a folder), or that
    cannot be read, is left out and reported to `on_refused(name, reason)`; the other dumps go on.
    """
    folder = inbox.folder()
    refused = on_refused or (lambda name, reason: None)
    digests = {}
    for path in find_dumps(folder, on_refused=lambda p, reason: refused(p.name, reason)):
        try:
            validate_dump_name(path.name)
            digests[path.name] = dump_digest(path, folder)
        except (InboxError, DumpReadError) as exc:
            refused(path.name, str(exc))
    return digests


def advance_cursor(cursor: str | None, digests: dict[str, str]) -> str:
    """The inbox sensor's cursor ({dump: content hash}, as JSON) once the dumps of `digests` have run: a run
    that did not come from the sensor (`python -m gcrp_assets.cli run`) records them, so the sensor does
    not request them again. Dumps the cursor knows and `digests` does not name keep their entries."""
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    return json.dumps({**seen, **digests}, sort_keys=True)


@dg.sensor(job=dump_stages_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="New or changed dumps in the inbox: register the partition and run its data stages.")
def inbox_sensor(context: dg.SensorEvaluationContext, inbox: DumpInbox) -> dg.SensorResult | dg.SkipReason:
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    current = dump_digests(inbox, on_refused=lambda name, reason: context.log.warning(
        f"inbox entry {name!r} is not registered as a dump: {reason}"))
    changed = sorted(name for name, digest in current.items() if seen.get(name) != digest)
    removed = sorted(set(seen) - set(current))
    for name in removed:
        context.log.warning(f"dump {name!r} left the inbox; its partition and artifacts are kept")
    if not changed:
        return dg.SkipReason("no new or changed dumps" + (f"; removed: {', '.join(removed)}" if removed else ""))
    registered = set(context.instance.get_dynamic_partitions(dumps.name))
    new = [name for name in changed if name not in registered]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=name, run_key=f"{name}@{current[name][:16]}",
                                    tags={"gcrp/dump_sha256": current[name]}) for name in changed],
        dynamic_partitions_requests=[dumps.build_add_request(new)] if new else [],
        cursor=advance_cursor(None, current),
    )


@dg.schedule(cron_schedule="0 3 * * 1", target=DATA_STAGES, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Weekly refresh of the data stages of every dump partition (never training).")
def weekly_data_refresh(context: dg.ScheduleEvaluationContext):
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for name in sorted(context.instance.get_dynamic_partitions(dumps.name)):
        yield dg.RunRequest(partition_key=name, run_key=f"refresh-{stamp}-{name}", asset_selection=[
            dg.AssetKey("raw_threads"), dg.AssetKey("filtered_threads"), dg.AssetKey("augmented_prompts")])
    yield dg.RunRequest(run_key=f"refresh-{stamp}-training-set", asset_selection=[dg.AssetKey("tokenized_parquet")])


data_automation = dg.AutomationConditionSensorDefinition(
    "data_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Data stages follow upstream data-version changes; eval_report follows a new checkpoint.")
