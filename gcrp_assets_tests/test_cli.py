"""Every command of the README's "Running stages from the command line" section, run as a user runs it."""

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from gcrp_assets.orchestration.artifacts import latest_materialization
from gcrp_assets_tests.factories import thread, write_jsonl
from gcrp_assets_tests.processes import own_process_group, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    base = tmp_path_factory.mktemp("cli")
    inbox = base / "inbox"
    write_jsonl(inbox / "a.jsonl", [thread(f"a{i}", 2 + i % 3, 7 + i % 4) for i in range(8)])
    write_jsonl(inbox / "b.jsonl", [thread(f"b{i}", 3 + i % 2, 8) for i in range(6)], {2: "{broken"})
    home = base / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    return {**os.environ, "DAGSTER_HOME": str(home), "GCRP_INBOX": str(inbox),
            "GCRP_ARTIFACTS": str(base / "artifacts"), "GCRP_BASE_MODEL": str(tiny_model_dir)}


def run(env, *args, timeout=300):
    done = subprocess.run([str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@contextmanager
def instance_of(env):
    """The instance the CLI commands of `env` wrote to (its DAGSTER_HOME), as DagsterInstance.get() sees it."""
    os.environ["DAGSTER_HOME"], previous = env["DAGSTER_HOME"], os.environ.get("DAGSTER_HOME")
    try:
        with dg.DagsterInstance.get() as instance:
            yield instance
    finally:
        if previous is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = previous


def materialization(env, key, partition=None):
    with instance_of(env) as instance:
        m = latest_materialization(instance, key, partition)
        return {k: v.value for k, v in m.metadata.items()} if m else None


def test_register_then_launch_one_partition_by_job_and_by_assets(env):
    out = run(env, BIN / "python", "-m", "gcrp_assets.cli", "register")
    assert "a.jsonl, b.jsonl" in out.stdout
    run(env, BIN / "dg", "launch", "--job", "dump_stages", "--partition", "a.jsonl")
    assert materialization(env, "augmented_prompts", "a.jsonl")["samples"] == 8
    run(env, BIN / "dg", "launch", "--assets", "raw_threads,filtered_threads,augmented_prompts", "--partition", "b.jsonl")
    raw = materialization(env, "raw_threads", "b.jsonl")
    assert raw["rejected_lines"] == 1 and raw["threads"] == 6


def test_config_override_from_json_and_yaml(env, tmp_path):
    run(env, BIN / "dg", "launch", "--assets", "base_model,tokenized_parquet", "--config-json",
        json.dumps({"ops": {"tokenized_parquet": {"config": {"format": "herrsimian", "dumps": ["a.jsonl"]}}}}))
    tokenized = materialization(env, "tokenized_parquet")
    assert tokenized["format"] == "herrsimian" and tokenized["dumps"] == ["a.jsonl"]
    config = tmp_path / "run.yaml"
    config.write_text("ops:\n  tokenized_parquet:\n    config:\n      format: chatml\n      max_length: 1024\n")
    run(env, BIN / "dg", "launch", "--assets", "tokenized_parquet", "-c", config)
    tokenized = materialization(env, "tokenized_parquet")
    assert tokenized["format"] == "chatml" and tokenized["dumps"] == ["a.jsonl", "b.jsonl"]


SMALL_CHAIN = ("ops:\n"
               "  tokenized_parquet: {config: {max_length: 512, min_eval_threads: 2}}\n"
               "  lora_checkpoint: {config: {max_steps: 2, max_length: 512, precision: fp32}}\n"
               "  eval_report: {config: {max_generations: 1, max_new_tokens: 4, speaker_turns: 2, precision: fp32,"
               " bootstrap_resamples: 200}}\n")


def test_one_stage_and_everything_downstream(env, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_CHAIN)
    run(env, BIN / "dg", "launch", "--assets", "tokenized_parquet+", "-c", config, timeout=600)
    checkpoint = materialization(env, "lora_checkpoint")
    assert checkpoint["steps"] == 2 and checkpoint["trained_on_dumps"] == ["a.jsonl", "b.jsonl"]
    assert materialization(env, "eval_report")["generations"] == 1
    out = run(env, BIN / "python", "-m", "gcrp_assets.cli", "report-path")
    assert out.stdout.startswith("Eval report: ") and out.stdout.strip().endswith("report.md")


def test_run_launches_every_run_through_the_instance_from_the_code_location(env, tmp_path):
    """`make run`: each run is launched from the code location `gcrp_assets` (as from the UI) in its own run
    worker, which PROCESS_TAG then names; the inbox sensor's cursor records the dumps it ran."""
    from dagster._core.scheduler.instigation import InstigatorType

    from gcrp_assets.defs.automation import cursor_digests, dump_digests
    from gcrp_assets.orchestration.resources import DumpInbox
    from gcrp_assets.orchestration.runner import PROCESS_TAG, _worker_pid

    config = tmp_path / "small.yaml"
    config.write_text(SMALL_CHAIN)  # the chain of the test above: every artifact is reused
    with instance_of(env) as instance:
        before = {r.run_id for r in instance.get_runs()}
    out = run(env, BIN / "python", "-m", "gcrp_assets.cli", "run", "-c", config, timeout=600)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("Eval report: ") and last.endswith("report.md"), out.stdout
    with instance_of(env) as instance:
        runs = [r for r in instance.get_runs() if r.run_id not in before]
        assert sorted((r.job_name, r.tags.get("dagster/partition", "")) for r in runs) == [
            ("dump_stages", "a.jsonl"), ("dump_stages", "b.jsonl"), ("training_chain", "")]
        workers = set()
        for r in runs:
            assert r.status == dg.DagsterRunStatus.SUCCESS
            assert r.remote_job_origin is not None and r.remote_job_origin.location_name == "gcrp_assets"
            pid = int(r.tags[PROCESS_TAG].rpartition(":")[2])
            assert pid == _worker_pid(instance, r.run_id) and pid != os.getpid()
            workers.add(pid)
        assert len(workers) == 3  # one run worker per run
        [sensor] = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                    if s.instigator_name == "inbox_sensor"]
        assert cursor_digests(sensor.instigator_data.cursor) == dump_digests(DumpInbox(path=env["GCRP_INBOX"]))


def test_a_run_whose_run_worker_is_gone_is_marked_failed_even_if_the_launcher_lives():
    from dagster._core.events import EngineEventData

    from gcrp_assets.orchestration.runner import PROCESS_TAG, _process_tag, mark_orphaned_runs

    @dg.op
    def step():
        pass

    @dg.job
    def chain():
        step()

    gone = subprocess.Popen(["true"])
    gone.wait()
    with dg.instance_for_test() as instance:
        worker_gone = instance.create_run_for_job(chain, tags={PROCESS_TAG: _process_tag()})  # launched here
        instance.report_engine_event(f"Started process for run (pid: {gone.pid}).", worker_gone,
                                     EngineEventData.in_process(gone.pid))
        launcher_gone = instance.create_run_for_job(chain, tags={PROCESS_TAG: _process_tag(gone.pid)})
        instance.report_engine_event(f"Started process for run (pid: {os.getpid()}).", launcher_gone,
                                     EngineEventData.in_process(os.getpid()))
        assert mark_orphaned_runs(instance) == [worker_gone.run_id]
        assert instance.get_run_by_id(worker_gone.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(launcher_gone.run_id).status == dg.DagsterRunStatus.NOT_STARTED


def _start_daemon(env):
    """`dagster-daemon run` in its own process group with default signal handlers, so SIGINT stops it whole."""
    return subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=own_process_group)


@pytest.mark.parametrize("selection", [["--all"], ["--from", "a.jsonl", "--to", "b.jsonl"]], ids=["all", "range"])
def test_job_backfill_of_partitions(env, selection):
    before = {p: materialization(env, "raw_threads", p)["data_version"] for p in ("a.jsonl", "b.jsonl")}
    run(env, BIN / "dagster", "job", "backfill", "-w", "workspace.yaml", "-j", "dump_stages", *selection, "--noprompt")
    # The backfill's runs are queued; the daemon (as under `make dev`) launches them.
    daemon = _start_daemon(env)
    try:
        with instance_of(env) as instance:
            backfill_id = max(instance.get_backfills(), key=lambda b: b.backfill_timestamp).backfill_id
            deadline = time.time() + 240
            while True:
                runs = instance.get_runs(filters=dg.RunsFilter(job_name="dump_stages",
                                                               tags={"dagster/backfill": backfill_id}))
                if len(runs) == 2 and all(r.is_finished for r in runs):
                    break
                assert time.time() < deadline, [r.status for r in runs]
                time.sleep(2)
            assert sorted(r.tags["dagster/partition"] for r in runs) == ["a.jsonl", "b.jsonl"]
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    finally:
        stop_process_group(daemon, timeout=30)
    # Unchanged dumps: the backfill reused every artifact and kept the data versions.
    for partition, version in before.items():
        after = materialization(env, "raw_threads", partition)
        assert after["data_version"] == version and after["cached"] is True
