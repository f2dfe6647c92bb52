"""Materialize everything in order, in a real instance: every dump partition's data stages, then the
training chain. Two ways to run the same sequence:

- `launch_chain` (`python -m gcrp_assets.cli run`, README command 1): loads the code location `gcrp_assets`
  in a code server, as `dg dev` does, and launches each run through the instance's run launcher (bypassing
  the run queue, which only the daemon drains), then waits for it. Each run has the code location as its
  origin (the UI's timeline and run pages show it; it can be re-executed from the UI), runs in its own run
  worker process, and the inbox sensor's cursor records the dumps it ran, so the sensor does not request
  them again.
- `materialize_chain`: executes in this process with the given definitions' resources (tests).
"""

import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import dagster as dg
import psutil

from gcrp_assets.lib.ingest.dumps import find_dumps
from gcrp_assets.orchestration.partitions import dumps
from gcrp_assets.orchestration.resources import DumpInbox, default_resources, resolved

LOCATION = "gcrp_assets"  # the code location's name: workspace.yaml, [tool.dg.project], [tool.dagster]
CODE_LOCATION_MODULE = "gcrp_assets.definitions"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the code server's working directory
INBOX_SENSOR = "inbox_sensor"


@dataclass
class ChainOutcome:
    dumps: list[str]
    results: list  # dg.ExecuteInProcessResult (materialize_chain) or dg.DagsterRun (launch_chain)

    @staticmethod
    def succeeded(result) -> bool:
        if isinstance(result, dg.DagsterRun):
            return result.status == dg.DagsterRunStatus.SUCCESS
        return result.success

    @property
    def success(self) -> bool:
        return all(self.succeeded(r) for r in self.results)

    @property
    def failed_run_id(self) -> str | None:
        return next((r.run_id for r in self.results if not self.succeeded(r)), None)


def inbox_of(defs: dg.Definitions | None = None) -> DumpInbox:
    """The inbox of `defs` (default: of the code location), its `dg.EnvVar` path read."""
    return resolved((defs.resources if defs is not None else default_resources())["inbox"])


def register_inbox(instance: dg.DagsterInstance, inbox: DumpInbox) -> list[str]:
    """Register every dump in the inbox as a partition (idempotent) and return their keys."""
    names = [p.name for p in find_dumps(inbox.folder())]
    if not names:
        raise dg.Failure(f"{inbox.folder()}: the inbox holds no dumps")
    known = set(instance.get_dynamic_partitions(dumps.name))
    new = [n for n in names if n not in known]
    if new:
        instance.add_dynamic_partitions(dumps.name, new)
    return names


PROCESS_TAG = "gcrp/process"  # host:pid of the process that executes a run this runner started


def _process_tag(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid a run worker reported for itself ("Started process for run (pid: N)", the run's first engine
    event with a pid), if any."""
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        event = record.event_log_entry.dagster_event
        entry = event.engine_event_data.metadata.get("pid") if event and event.engine_event_data else None
        if entry is not None and str(entry.value).isdigit():
            return int(entry.value)
    return None


def mark_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Runs this runner started whose process is gone (killed, machine restarted) still read STARTED in the
    instance: mark each failed, saying so, and return their ids. The process is the run worker once it has
    reported its pid, else the one named by PROCESS_TAG (the process that executed in-process, or launched).
    Runs of other launchers (the daemon, the web UI) carry no PROCESS_TAG and are left to Dagster's run
    monitoring."""
    orphaned = []
    host = socket.gethostname()
    active = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING,
                                     dg.DagsterRunStatus.NOT_STARTED])
    for run in instance.get_runs(filters=active):
        where = run.tags.get(PROCESS_TAG, "")
        run_host, _, pid = where.rpartition(":")
        if run_host != host or not pid.isdigit():
            continue
        pid = str(_worker_pid(instance, run.run_id) or pid)
        if psutil.pid_exists(int(pid)):
            continue
        instance.report_run_failed(run, message=f"the process that ran it ({run_host}:{pid}) is gone (killed?); "
                                                "marked failed by the next `gcrp_assets.cli run`")
        orphaned.append(run.run_id)
    return orphaned


def _config_for(job_nodes: set[str], run_config: dg.RunConfig | dict | None) -> dict:
    """The part of a whole-chain run config that concerns this job's assets."""
    if run_config is None:
        return {}
    config = run_config.to_config_dict() if isinstance(run_config, dg.RunConfig) else dict(run_config)
    ops = {name: value for name, value in (config.get("ops") or {}).items() if name in job_nodes}
    return {**{k: v for k, v in config.items() if k != "ops"}, **({"ops": ops} if ops else {})}


def _report_orphans(instance: dg.DagsterInstance) -> None:
    for run_id in mark_orphaned_runs(instance):
        print(f"run {run_id} was left STARTED by a process that is gone: marked failed")


def materialize_chain(instance: dg.DagsterInstance, defs: dg.Definitions,
                      run_config: dg.RunConfig | dict | None = None) -> ChainOutcome:
    """The whole chain executed in this process, with `defs` and its resources."""
    _report_orphans(instance)
    names = register_inbox(instance, inbox_of(defs))
    per_dump = defs.resolve_job_def("dump_stages")
    per_dump_nodes = {node.name for node in per_dump.nodes}
    tags = {PROCESS_TAG: _process_tag()}
    results = []
    for name in names:
        result = per_dump.execute_in_process(instance=instance, partition_key=name, tags=tags,
                                             run_config=_config_for(per_dump_nodes, run_config),
                                             raise_on_error=False)
        results.append(result)
        if not result.success:
            return ChainOutcome(names, results)
    chain = defs.resolve_job_def("training_chain")
    results.append(chain.execute_in_process(instance=instance, tags=tags, raise_on_error=False,
                                            run_config=_config_for({node.name for node in chain.nodes}, run_config)))
    return ChainOutcome(names, results)


@contextmanager
def code_location(instance: dg.DagsterInstance) -> Iterator:
    """The code location `gcrp_assets` loaded in a code server (a subprocess, as under `dg dev`), as a
    workspace request context; the server stops when the block ends, once its runs have finished."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget

    target = ModuleTarget(module_name=CODE_LOCATION_MODULE, attribute=None,
                          working_directory=str(PROJECT_ROOT), location_name=LOCATION)
    with WorkspaceProcessContext(instance, target, version=dg.__version__,
                                 code_server_log_level="WARNING") as process_context:  # as under `dg dev`
        workspace = process_context.create_request_context()
        error = workspace.get_code_location_error(LOCATION)
        if error is not None:
            raise dg.DagsterError(f"the code location {LOCATION} did not load:\n{error.to_string()}")
        yield workspace


def launch_run(instance: dg.DagsterInstance, workspace, job_name: str, run_config: dict | None = None,
               tags: dict[str, str] | None = None) -> dg.DagsterRun:
    """Create a run of `job_name` from the code location and launch it through the instance's run launcher
    (a run worker process started by the code server), as the UI's Launchpad does."""
    from dagster._core.definitions.selector import JobSubsetSelector

    location = workspace.get_code_location(LOCATION)
    [repository] = location.get_repositories().values()
    remote_job = location.get_job(JobSubsetSelector(location_name=LOCATION, repository_name=repository.name,
                                                    job_name=job_name, op_selection=None))
    plan = location.get_execution_plan(remote_job, run_config or {}, step_keys_to_execute=None, known_state=None,
                                       instance=instance)
    run = instance.create_run(
        job_name=job_name, run_id=None, run_config=run_config or {}, status=dg.DagsterRunStatus.NOT_STARTED,
        tags={**remote_job.tags, **(tags or {})}, root_run_id=None, parent_run_id=None,
        step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
        execution_plan_snapshot=plan.execution_plan_snapshot, job_snapshot=remote_job.job_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot, asset_selection=None, asset_check_selection=None,
        resolved_op_selection=None, op_selection=None, remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(), asset_graph=repository.asset_graph)
    return instance.launch_run(run.run_id, workspace)


def wait_for_run(instance: dg.DagsterInstance, run_id: str, poll_seconds: float = 1.0) -> dg.DagsterRun:
    """Wait until the run finishes; once its run worker reports its pid, PROCESS_TAG names that process.
    Interrupted (Ctrl-C), ask the run launcher to terminate the run, then re-raise."""
    recorded = False
    try:
        while True:
            run = instance.get_run_by_id(run_id)
            if not recorded:
                pid = _worker_pid(instance, run_id)
                if pid is not None:
                    instance.add_run_tags(run_id, {PROCESS_TAG: _process_tag(pid)})
                    recorded = True
            if run.is_finished:
                return run
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        print(f"interrupted: terminating run {run_id}", file=sys.stderr)
        instance.run_launcher.terminate(run_id)
        raise


def advance_sensor_cursor(instance: dg.DagsterInstance, workspace, digests: dict[str, str]) -> None:
    """Record the dumps of `digests` ({dump: content hash}, just run) in the inbox sensor's cursor, as its
    own tick would, so that it does not request them again (its state keeps its running/stopped status)."""
    from gcrp_assets.defs.automation import advance_cursor

    [repository] = workspace.get_code_location(LOCATION).get_repositories().values()
    sensor = repository.get_sensor(INBOX_SENSOR)
    stored = instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
    state = sensor.get_current_instigator_state(stored)
    data = state.instigator_data
    state = state.with_data(data._replace(cursor=advance_cursor(data.cursor, digests)))
    if stored is None:
        instance.add_instigator_state(state)
    else:
        instance.update_instigator_state(state)


def launch_chain(instance: dg.DagsterInstance, run_config: dg.RunConfig | dict | None = None,
                 poll_seconds: float = 1.0) -> ChainOutcome:
    """The whole chain launched through the instance from the code location, one run at a time, each
    waited for; stops at the first run that does not succeed."""
    from gcrp_assets.defs.automation import dump_digests

    _report_orphans(instance)
    inbox = inbox_of()
    names = register_inbox(instance, inbox)
    digests = dump_digests(inbox)
    tags = {PROCESS_TAG: _process_tag()}  # this process until the run worker reports its own
    results = []
    with code_location(instance) as workspace:
        [repository] = workspace.get_code_location(LOCATION).get_repositories().values()
        nodes = {name: set(repository.get_full_job(name).node_names) for name in ("dump_stages", "training_chain")}
        done: dict[str, str] = {}
        try:
            for name in names:
                run = launch_run(instance, workspace, "dump_stages", _config_for(nodes["dump_stages"], run_config),
                                 {**tags, "dagster/partition": name,
                                  **({"gcrp/dump_sha256": digests[name]} if name in digests else {})})
                results.append(wait_for_run(instance, run.run_id, poll_seconds))
                if not ChainOutcome.succeeded(results[-1]):
                    return ChainOutcome(names, results)
                if name in digests:
                    done[name] = digests[name]
        finally:
            if done:
                advance_sensor_cursor(instance, workspace, done)
        run = launch_run(instance, workspace, "training_chain", _config_for(nodes["training_chain"], run_config),
                         tags)
        results.append(wait_for_run(instance, run.run_id, poll_seconds))
    return ChainOutcome(names, results)
