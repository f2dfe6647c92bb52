"""A cached result never lies: code versions are computed from what each asset imports, an artifact that
failed a blocking check is never reused, checks are computed again from stored facts on reuse, and a run
left STARTED by a killed process is marked failed by the next run."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap

from pathlib import Path

import dagster as dg
import pytest

from gcrp_assets.orchestration.artifacts import CHECKS_PASSED, MANIFEST, build_or_reuse, latest_materialization
from gcrp_assets.orchestration.resources import ArtifactStore
from gcrp_assets.orchestration.runner import PROCESS_TAG, mark_orphaned_runs
from gcrp_assets.lib.code_closure import PACKAGE_ROOT, code_version, module_closure

# Each asset's code version is computed from these roots (see the defs modules).
ASSET_ROOTS = {
    "raw_threads / filtered_threads / augmented_prompts": ("gcrp_assets.defs.data_stages",),
    "tokenized_parquet": ("gcrp_assets.defs.tokenized",),
    "base_model": ("gcrp_assets.defs.training",),
    "lora_checkpoint": ("gcrp_assets.defs.training", "gcrp_assets.trainer.train"),
    "eval_report": ("gcrp_assets.defs.evaluation",),
}


def _rel(paths) -> set[str]:
    return {p.relative_to(PACKAGE_ROOT).as_posix() for p in paths}


def test_code_closures_hold_the_modules_the_hand_lists_forgot():
    data = _rel(module_closure("gcrp_assets.defs.data_stages"))
    assert {"lib/clean/markup.py", "lib/prompts/sheets.py", "lib/ingest/sillytavern.py", "lib/ingest/cards.py",
            "lib/ingest/stage.py", "lib/clean/stage.py", "lib/prompts/stage.py", "templates/sheet_template.yaml", "templates/system_prompt.jinja"} <= data
    tokenize = _rel(module_closure("gcrp_assets.defs.tokenized"))
    assert {"lib/schemas.py", "lib/parquet.py", "lib/formats/tokenization.py", "formats/party-final-eos.yaml"} <= tokenize
    evaluation = _rel(module_closure("gcrp_assets.defs.evaluation"))
    assert {"lib/formats/tokenization.py", "lib/clean/ooc.py", "lib/tables.py", "lib/parquet.py"} <= evaluation
    trainer = _rel(module_closure("gcrp_assets.defs.training", "gcrp_assets.trainer.train"))
    assert {"trainer/train.py", "lib/training/packing.py", "lib/training/schedules.py", "lib/training/data.py"} <= trainer
    assert "lib/evaluation/losses.py" not in data and "trainer/train.py" not in tokenize  # closures, not everything


@pytest.mark.parametrize("asset", sorted(ASSET_ROOTS))
def test_touching_any_file_of_an_assets_closure_changes_its_code_version(tmp_path, asset):
    roots = ASSET_ROOTS[asset]
    copy = tmp_path / "gcrp_assets"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "sample_corpus"))
    before = code_version(*roots, root=copy)
    assert before == code_version(*roots)  # the copy hashes like the package itself
    closure = module_closure(*roots, root=copy)
    for path in closure:
        original = path.read_bytes()
        path.write_bytes(original + b"\n# touched\n")
        try:
            assert code_version(*roots, root=copy) != before, path.relative_to(copy)
        finally:
            path.write_bytes(original)
    outside = copy / "lib" / "unused_module.py"  # a module nobody imports changes nothing
    outside.write_text("X = 1\n")
    assert code_version(*roots, root=copy) == before


# ---------------------------------------------------------------------------------------------------------
# A failed blocking check's artifact is never reused; checks are recomputed from the stored facts.

def _checked_asset(root: Path, builds: list):
    @dg.asset(check_specs=[dg.AssetCheckSpec("value_is_good", asset="checked", blocking=True)])
    def checked(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        def build(folder: Path) -> dict:
            builds.append(folder)
            value = (root / "input.txt").read_text()
            (folder / "out.json").write_text(json.dumps(value))
            return {"value": value}

        def checks(m: dict) -> list[dg.AssetCheckResult]:
            return [dg.AssetCheckResult(check_name="value_is_good", passed=m["value"] == "good")]

        built = build_or_reuse(context, lambda fp: root / "checked" / fp[:16], {"code": "v1"}, build, checks=checks)
        return built.result()

    return checked


def test_an_artifact_that_failed_its_blocking_check_is_rebuilt_not_reused(tmp_path):
    builds: list = []
    asset = _checked_asset(tmp_path, builds)
    with dg.DagsterInstance.ephemeral() as instance:
        (tmp_path / "input.txt").write_text("bad")
        first = dg.materialize([asset], instance=instance, raise_on_error=False)
        assert not first.success and len(builds) == 1
        assert not (builds[0] / MANIFEST).exists()  # never to be reused
        meta = latest_materialization(instance, "checked").metadata
        assert meta[CHECKS_PASSED].value is False

        # The same inputs again (a retry): rebuilt, not handed back.
        dg.materialize([asset], instance=instance, raise_on_error=False)
        assert len(builds) == 2

        (tmp_path / "input.txt").write_text("good")  # the cause fixed (the fingerprint is the same)
        assert dg.materialize([asset], instance=instance).success and len(builds) == 3
        assert (builds[-1] / MANIFEST).exists()
        assert dg.materialize([asset], instance=instance).success and len(builds) == 3  # now reused
        assert latest_materialization(instance, "checked").metadata["cached"].value is True

        # A stored fact that no longer passes (edited manifest): the check is computed again and fails, so the
        # artifact is rebuilt rather than reused.
        manifest = json.loads((builds[-1] / MANIFEST).read_text())
        manifest["metadata"]["value"]["value"] = "bad"
        (builds[-1] / MANIFEST).write_text(json.dumps(manifest))
        assert dg.materialize([asset], instance=instance).success and len(builds) == 4


def test_lora_checkpoint_never_reuses_a_nan_adapter_and_checks_a_reused_one_from_its_loss_history(
        tmp_path, tiny_model_dir):
    from gcrp_assets.defs.training import lora_checkpoint
    from gcrp_assets.orchestration.training_config import LoraConfig
    from gcrp_assets_tests.test_training_support import record_upstream, synthetic_rows, test_instance, write_tokenized

    class NoLaunch(dg.PipesSubprocessClient):
        launches = 0

        def run(self, *args, **kwargs):  # noqa: ARG002
            NoLaunch.launches += 1
            raise RuntimeError("no trainer in this step")

    data = write_tokenized(tmp_path / "tok", synthetic_rows(n_train=4, n_eval=2, lengths=(30, 60)))
    root = tmp_path / "artifacts"
    with test_instance(tmp_path) as instance:
        record_upstream(instance, data, tiny_model_dir)

        def materialize(config: LoraConfig, pipes):
            return dg.materialize([lora_checkpoint], instance=instance, raise_on_error=False,
                                  resources={"store": ArtifactStore(root=str(root)), "pipes": pipes},
                                  run_config=dg.RunConfig(ops={"lora_checkpoint": config}))

        # Diverging training (absurd learning rate): loss_is_finite fails; the adapter gets no manifest, so a
        # retry with the same fingerprint trains again instead of reusing it.
        diverging = LoraConfig(max_steps=3, batch_size=2, logging_steps=1, eval_steps=0, precision="fp32",
                               learning_rate=1e30, warmup_steps=0, lr_scheduler="constant")
        first = materialize(diverging, dg.PipesSubprocessClient())
        assert not first.success
        assert [(c.check_name, c.passed) for c in first.get_asset_check_evaluations()] == [("loss_is_finite", False)]
        assert not list(root.glob("lora_checkpoint/*/manifest.json"))
        retry = materialize(diverging, NoLaunch())
        assert not retry.success and NoLaunch.launches == 1  # it tried to train again: nothing was reused

        # A good adapter is reused; when its stored loss history says NaN, the check fails on reuse and it is
        # trained again.
        good = LoraConfig(max_steps=2, batch_size=2, logging_steps=1, eval_steps=0, precision="fp32",
                          learning_rate=1e-3, warmup_steps=0, lr_scheduler="constant")
        assert materialize(good, dg.PipesSubprocessClient()).success
        folder = Path(latest_materialization(instance, "lora_checkpoint").metadata["path"].value)
        assert materialize(good, NoLaunch()).success and NoLaunch.launches == 1  # reused, check passed
        history = json.loads((folder / "loss_history.json").read_text())
        history[-1]["loss"] = float("nan")
        (folder / "loss_history.json").write_text(json.dumps(history))
        assert not materialize(good, NoLaunch()).success and NoLaunch.launches == 2


# ---------------------------------------------------------------------------------------------------------
# A killed run does not stay STARTED.

_SLOW_RUN = textwrap.dedent("""
    import sys, time
    import dagster as dg
    from gcrp_assets.orchestration.runner import PROCESS_TAG, _process_tag

    @dg.asset
    def slow():
        print("started", flush=True)
        time.sleep(120)

    with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
        dg.materialize([slow], instance=instance, tags={PROCESS_TAG: _process_tag()})
""")


def test_a_run_left_started_by_a_killed_process_is_marked_failed(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    child = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(home)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED and PROCESS_TAG in run.tags
        assert mark_orphaned_runs(instance) == [run.run_id]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert mark_orphaned_runs(instance) == []  # said once
