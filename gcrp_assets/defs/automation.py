"""How the pipeline runs by itself: the inbox sensor, the weekly data refresh, and declarative automation.

- `inbox_sensor` (running by default): a new or changed dump (by content hash, not mtime) registers its
  partition and requests a run of the per-dump data stages; the run key makes the request idempotent.
  Each tick stats every dump first and hashes only those whose size or times differ from the ones recorded
  with their hash in the cursor (`scan_inbox`), so an unchanged inbox costs a directory walk, not a read.
  A dump that disappears is reported in the sensor's log and tick, never deleted silently.
- `weekly_data_refresh` (stopped by default): re-materializes the per-dump data stages of every dump
  partition on Mondays 03:00 UTC, one run per dump; `tokenized_parquet` follows through `data_automation`
  once their data changed (requesting it in the same tick could start it before the stages finish).
  It never targets training.
- `data_automation` (running by default): data stages follow upstream *data version* changes (not mere
  re-materializations or code reloads); `eval_report` follows a new checkpoint. `lora_checkpoint` has
  no automation condition: training starts only when someone asks for it.
"""

import json
from pathlib import Path
from typing import Callable

import dagster as dg

from gcrp_assets.orchestration.partitions import dumps
from gcrp_assets.orchestration.resources import DumpInbox
from gcrp_assets.lib.ingest.contract import DumpReadError
from gcrp_assets.lib.ingest.dumps import dump_digest, find_dumps
from gcrp_assets.lib.ingest.inbox import InboxError, validate_dump_name

A = dg.AutomationCondition

PER_DUMP_STAGES = dg.AssetSelection.assets("raw_threads", "filtered_threads", "augmented_prompts")


def follow_upstream_data() -> dg.AutomationCondition:
    """Eager, but triggered by a changed upstream data version rather than by any new materialization."""
    return A.eager().replace("newly_updated", A.data_version_changed()).with_label("upstream data changed")


def follow_new_checkpoint() -> dg.AutomationCondition:
    """A checkpoint with a new data version that the report has not followed yet: a run that made the report
    after the checkpoint (`training_chain`) or a request already made is not answered with another run."""
    changed = A.any_deps_match(A.data_version_changed()).allow(dg.AssetSelection.assets("lora_checkpoint"))
    return (
        changed.since(A.newly_requested() | A.newly_updated())
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


def dump_stat(path: Path) -> list[int] | None:
    """What the inbox sensor compares before it hashes a dump: [files, bytes, newest mtime_ns, newest ctime_ns]
    over the dump (a file), or over a folder and every folder and file in it as `dump_digest` reads them (linked
    files by their target, linked folders not descended into). Adding, removing or renaming an entry changes a
    folder's mtime; writing a file changes its ctime, which no copy tool sets back. None when it cannot be read."""
    try:
        entries = [path, *path.glob("**/*")] if path.is_dir() else [path]
        stats = [(entry.stat(), entry.is_file()) for entry in entries]
    except OSError:
        return None
    return [sum(is_file for _, is_file in stats), sum(st.st_size for st, is_file in stats if is_file),
            max(st.st_mtime_ns for st, _ in stats), max(st.st_ctime_ns for st, _ in stats)]


def read_cursor(cursor: str | None) -> dict[str, dict]:
    """The inbox sensor's cursor: {dump: {"sha256": content hash, "stat": dump_stat when hashed}}. A dump
    recorded without "stat" (by `advance_cursor`, or while it changed during hashing) is hashed on the next
    tick. Cursors of earlier versions ({dump: content hash}) read as entries without "stat"."""
    seen = json.loads(cursor) if cursor else {}
    return {name: entry if isinstance(entry, dict) else {"sha256": entry} for name, entry in seen.items()}


def cursor_digests(cursor: str | None) -> dict[str, str]:
    """{dump: content hash} of a cursor."""
    return {name: entry["sha256"] for name, entry in read_cursor(cursor).items()}


def scan_inbox(inbox: DumpInbox, known: dict[str, dict] | None = None,
               on_refused: Callable[[str, str], None] | None = None) -> dict[str, dict]:
    """Every dump in the inbox as a cursor entry ({"sha256", "stat"}), by partition key.

    A dump whose `dump_stat` equals the one `known` recorded with its hash keeps that hash unread; any other is
    hashed in full (`dump_digest`). The stat is taken before and after hashing and recorded only when both
    agree, so a dump written while it was hashed is hashed again on the next scan. Only safe names become keys
    (`validate_dump_name`, checked again here because a key is forever): an entry whose name is not one, that
    links outside the inbox, or that holds such a link (a folder), or that cannot be read, is left out and
    reported to `on_refused(name, reason)`; the other dumps go on.
    """
    folder = inbox.folder()
    known = known or {}
    refused = on_refused or (lambda name, reason: None)
    entries = {}
    for path in find_dumps(folder, on_refused=lambda p, reason: refused(p.name, reason)):
        try:
            validate_dump_name(path.name)
            before = dump_stat(path)
            previous = known.get(path.name, {})
            if before is not None and previous.get("stat") == before:
                entries[path.name] = previous
                continue
            digest = dump_digest(path, folder)
            after = dump_stat(path)
            entries[path.name] = {"sha256": digest, **({"stat": after} if after is not None and after == before else {})}
        except (InboxError, DumpReadError) as exc:
            refused(path.name, str(exc))
    return entries


def dump_digests(inbox: DumpInbox, on_refused: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """Content hash of every dump in the inbox, by partition key, each hashed in full (`scan_inbox`)."""
    return {name: entry["sha256"] for name, entry in scan_inbox(inbox, on_refused=on_refused).items()}


def advance_cursor(cursor: str | None, digests: dict[str, str]) -> str:
    """The inbox sensor's cursor once the dumps of `digests` ({dump: content hash}) have run: a run that did
    not come from the sensor (`python -m gcrp_assets.cli run`) records them, so the sensor does not request
    them again. A dump whose hash is unchanged keeps its recorded stat; one with a new hash is recorded without
    (hashed once more on the next tick). Dumps the cursor knows and `digests` does not name keep their entries."""
    seen = read_cursor(cursor)
    for name, digest in digests.items():
        if seen.get(name, {}).get("sha256") != digest:
            seen[name] = {"sha256": digest}
    return json.dumps(seen, sort_keys=True)


@dg.sensor(job=dump_stages_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="New or changed dumps in the inbox: register the partition and run its data stages. "
                       "Compares each dump's size and times first and hashes only the dumps whose size or times changed.")
def inbox_sensor(context: dg.SensorEvaluationContext, inbox: DumpInbox) -> dg.SensorResult:
    seen = read_cursor(context.cursor)
    current = scan_inbox(inbox, seen, on_refused=lambda name, reason: context.log.warning(
        f"inbox entry {name!r} is not registered as a dump: {reason}"))
    changed = sorted(name for name, entry in current.items() if seen.get(name, {}).get("sha256") != entry["sha256"])
    removed = sorted(set(seen) - set(current))
    for name in removed:
        context.log.warning(f"dump {name!r} left the inbox; its partition and artifacts are kept")
    # Recorded on every tick, skipped or not: a touched dump is hashed once, not on every tick after.
    cursor = json.dumps(current, sort_keys=True)
    if not changed:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            "no new or changed dumps" + (f"; removed: {', '.join(removed)}" if removed else "")), cursor=cursor)
    registered = set(context.instance.get_dynamic_partitions(dumps.name))
    new = [name for name in changed if name not in registered]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=name, run_key=f"{name}@{current[name]['sha256'][:16]}",
                                    tags={"gcrp/dump_sha256": current[name]["sha256"]}) for name in changed],
        dynamic_partitions_requests=[dumps.build_add_request(new)] if new else [],
        cursor=cursor,
    )


@dg.schedule(cron_schedule="0 3 * * 1", target=PER_DUMP_STAGES, execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Weekly refresh of the per-dump data stages of every dump partition; tokenized_parquet "
                         "follows through automation when their data changed (never training).")
def weekly_data_refresh(context: dg.ScheduleEvaluationContext):
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for name in sorted(context.instance.get_dynamic_partitions(dumps.name)):
        yield dg.RunRequest(partition_key=name, run_key=f"refresh-{stamp}-{name}")


data_automation = dg.AutomationConditionSensorDefinition(
    "data_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Data stages follow upstream data-version changes; eval_report follows a new checkpoint.")
