"""Materialize everything in order, in a real instance: every dump partition's data stages, then the
training chain. Used by `python -m gcrp_assets.cli run` (README command 1) and by the tests."""

import os
import socket
from dataclasses import dataclass

import dagster as dg
import psutil

from gcrp_assets.orchestration.partitions import dumps
from gcrp_assets.lib.ingest.dumps import find_dumps


@dataclass
class ChainOutcome:
    dumps: list[str]
    results: list[dg.ExecuteInProcessResult]

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)


def register_inbox(instance: dg.DagsterInstance, defs: dg.Definitions) -> list[str]:
    """Register every dump in the inbox as a partition (idempotent) and return their keys."""
    inbox = defs.resources["inbox"]
    names = [p.name for p in find_dumps(inbox.folder())]
    if not names:
        raise dg.Failure(f"{inbox.folder()}: the inbox holds no dumps")
    known = set(instance.get_dynamic_partitions(dumps.name))
    new = [n for n in names if n not in known]
    if new:
        instance.add_dynamic_partitions(dumps.name, new)
    return names


PROCESS_TAG = "gcrp/process"  # host:pid of the process that executes an in-process run


def _process_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def mark_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Runs this runner started in a process that is gone (killed, machine restarted) still read STARTED in the
    instance: mark each failed, saying so, and return their ids. Runs of other launchers (the daemon, the
    web UI) carry no PROCESS_TAG and are left to Dagster's run monitoring."""
    orphaned = []
    host = socket.gethostname()
    active = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING,
                                     dg.DagsterRunStatus.NOT_STARTED])
    for run in instance.get_runs(filters=active):
        where = run.tags.get(PROCESS_TAG, "")
        run_host, _, pid = where.rpartition(":")
        if run_host != host or not pid.isdigit() or psutil.pid_exists(int(pid)):
            continue
        instance.report_run_failed(run, message=f"the process that ran it ({where}) is gone (killed?); "
                                                "marked failed by the next `gcrp_assets.cli run`")
        orphaned.append(run.run_id)
    return orphaned


def _config_for(job: dg.JobDefinition, run_config: dg.RunConfig | dict | None) -> dict:
    """The part of a whole-chain run config that concerns this job's assets."""
    if run_config is None:
        return {}
    config = run_config.to_config_dict() if isinstance(run_config, dg.RunConfig) else dict(run_config)
    nodes = {node.name for node in job.nodes}
    ops = {name: value for name, value in (config.get("ops") or {}).items() if name in nodes}
    return {**{k: v for k, v in config.items() if k != "ops"}, **({"ops": ops} if ops else {})}


def materialize_chain(instance: dg.DagsterInstance, defs: dg.Definitions,
                      run_config: dg.RunConfig | dict | None = None) -> ChainOutcome:
    for run_id in mark_orphaned_runs(instance):
        print(f"run {run_id} was left STARTED by a process that is gone: marked failed")
    names = register_inbox(instance, defs)
    per_dump = defs.resolve_job_def("dump_stages")
    tags = {PROCESS_TAG: _process_tag()}
    results = []
    for name in names:
        result = per_dump.execute_in_process(instance=instance, partition_key=name, tags=tags,
                                             run_config=_config_for(per_dump, run_config), raise_on_error=False)
        results.append(result)
        if not result.success:
            return ChainOutcome(names, results)
    chain = defs.resolve_job_def("training_chain")
    results.append(chain.execute_in_process(instance=instance, run_config=_config_for(chain, run_config),
                                            tags=tags, raise_on_error=False))
    return ChainOutcome(names, results)
