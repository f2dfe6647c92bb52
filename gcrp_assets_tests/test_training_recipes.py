"""Recipes: presets that fill only unset fields, the card values, the checks a recipe implies (GPU-only on a
CPU, prompt format), the WSD schedule in steps, the launch commands and the DeepSpeed JSON."""

import time

import dagster as dg
import pytest

from gcrp_assets.defs.training import lora_checkpoint, trainer_command
from gcrp_assets.orchestration.training_config import LoraConfig
from gcrp_assets.lib.training.recipes import (DEFAULTS, RECIPES, deepspeed_config, format_problem,
                                              hardware_problems)
from gcrp_assets.lib.training.schedules import (accumulation_steps, scheduler_kwargs, steps_per_epoch,
                                                total_steps, wsd_lr_ratio)
from gcrp_assets_tests.test_training_support import (extras_for, python, record_upstream, run_trainer, synthetic_rows,
                                                     test_instance, write_tokenized)


def test_smoke_is_the_plain_defaults_and_every_preset_names_real_fields():
    plain = {"recipe": "smoke", "allow_cpu": False, "force": False}
    assert set(LoraConfig.model_fields) == set(DEFAULTS) | set(plain)
    assert LoraConfig().resolved() == {**DEFAULTS, **plain} == LoraConfig(recipe="smoke").resolved()
    assert LoraConfig().recipe_fields() == {}
    for recipe in RECIPES.values():
        assert set(recipe.values) <= set(LoraConfig.model_fields), recipe.name
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        LoraConfig(recipe="nope").resolved()


def test_presets_carry_the_model_cards_settings():
    party = LoraConfig(recipe="party-12b").resolved()
    assert (party["load_in_8bit"], party["launcher"], party["nproc_per_node"], party["zero_stage"]) == (True, "deepspeed", 2, 2)
    assert not party["offload_optimizer"]
    assert (party["lr_scheduler"], party["learning_rate"], party["num_epochs"], party["max_steps"]) == ("cosine", 4e-6, 3, 0)
    assert party["format"] == "inst" and accumulation_steps(party, world_size=2) * 2 * party["batch_size"] == 12
    herr = LoraConfig(recipe="herrsimian-8b").resolved()
    assert herr["load_in_4bit"] and herr["bnb_4bit_quant_type"] == "nf4" and herr["bnb_4bit_use_double_quant"]
    assert (herr["rank"], herr["alpha"], herr["dropout"], herr["use_rslora"]) == (128, 256, 0.55, False)
    assert (herr["learning_rate"], herr["weight_decay"], herr["warmup_steps"]) == (9.5e-5, 0.01, 0)
    assert (herr["lr_scheduler"], herr["wsd_stable_epochs"], herr["wsd_decay_epochs"], herr["min_lr_ratio"]) == (
        "warmup_stable_decay", 3, 0, 0.25)
    assert (herr["num_epochs"], herr["batch_size"], herr["max_length"], herr["format"]) == (5, 1, 12288, "herrsimian")


def test_fields_set_explicitly_win_over_the_preset_even_when_equal_to_the_default():
    config = LoraConfig(recipe="herrsimian-8b", rank=8, dropout=0.05, max_steps=3)
    values = config.resolved()
    assert (values["rank"], values["dropout"], values["max_steps"]) == (8, 0.05, 3)   # set here
    assert (values["alpha"], values["learning_rate"], values["load_in_4bit"]) == (256, 9.5e-5, True)  # preset
    assert "rank" not in config.recipe_fields() and config.recipe_fields()["alpha"] == 256


def test_launchpad_run_config_overrides_only_what_it_names():
    seen = {}

    @dg.asset
    def probe(config: LoraConfig):
        seen.update(config.resolved())

    # A live instance: after other tests closed theirs, an ephemeral one cannot resolve definitions.
    with dg.instance_for_test() as instance:
        # As the Launchpad / `--config-json` send it; `dropout: 0.05` is the smoke value and still wins.
        assert dg.materialize([probe], instance=instance, run_config={"ops": {"probe": {"config": {
            "recipe": "herrsimian-8b", "learning_rate": 1e-5, "dropout": 0.05, "max_steps": 3}}}}).success
        assert (seen["learning_rate"], seen["dropout"], seen["max_steps"]) == (1e-5, 0.05, 3)
        assert (seen["rank"], seen["load_in_4bit"], seen["lr_scheduler"]) == (128, True, "warmup_stable_decay")
        # As Python code sends it (a Config object in RunConfig), including a value equal to the smoke default.
        seen.clear()
        assert dg.materialize([probe], instance=instance, run_config=dg.RunConfig(ops={"probe": LoraConfig(
            recipe="party-12b", learning_rate=1e-3, nproc_per_node=4)})).success
        assert (seen["learning_rate"], seen["nproc_per_node"]) == (1e-3, 4)
        assert (seen["zero_stage"], seen["global_batch_size"], seen["load_in_8bit"]) == (2, 12, True)


def test_gpu_recipes_and_gpu_only_features_are_refused_on_a_cpu_with_the_reason():
    for name in ("party-12b", "herrsimian-8b"):
        problems = hardware_problems(LoraConfig(recipe=name).resolved(), cuda_devices=0)
        assert len(problems) == 1 and name in problems[0] and "allow_cpu" in problems[0]
        assert hardware_problems(LoraConfig(recipe=name, allow_cpu=True).resolved(), cuda_devices=0) == []
        assert hardware_problems(LoraConfig(recipe=name).resolved(), cuda_devices=RECIPES[name].gpus) == []
    assert hardware_problems(LoraConfig().resolved(), cuda_devices=0) == []
    # Features no CPU can run fail whatever allow_cpu says.
    for field, value, word in (("precision", "fp16", "fp16"), ("attn_implementation", "flash_attention_2", "flash"),
                               ("optim", "paged_adamw_8bit", "paged")):
        problems = hardware_problems(LoraConfig(allow_cpu=True, **{field: value}).resolved(), cuda_devices=0)
        assert len(problems) == 1 and word in problems[0]
    assert hardware_problems(LoraConfig(nproc_per_node=4, launcher="torchrun").resolved(), cuda_devices=2)
    assert hardware_problems(LoraConfig(load_in_4bit=True, zero_stage=3, launcher="deepspeed").resolved(), 1)
    assert hardware_problems(LoraConfig(nproc_per_node=2).resolved(), 0)  # launcher python = one process


class _NoLaunch(dg.PipesSubprocessClient):
    def run(self, *args, **kwargs):  # noqa: ARG002
        raise AssertionError("the trainer must not be launched")


def test_the_asset_fails_before_launching_anything(tmp_path, tiny_model_dir):
    data = write_tokenized(tmp_path / "tok", synthetic_rows(4, 1))
    with test_instance(tmp_path) as instance:
        record_upstream(instance, data, tiny_model_dir)
        started = time.perf_counter()
        result = dg.materialize([lora_checkpoint], instance=instance, raise_on_error=False,
                                resources={"store": _store(tmp_path), "pipes": _NoLaunch()},
                                run_config=dg.RunConfig(ops={"lora_checkpoint": LoraConfig(recipe="party-12b")}))
        assert not result.success and time.perf_counter() - started < 30
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.step_failure_data.error.message
        assert "party-12b" in message and "allow_cpu" in message and "none" in message


def test_the_trainer_itself_refuses_gpu_recipes_and_other_formats_before_loading_a_model(tmp_path, tiny_model_dir):
    data = write_tokenized(tmp_path / "tok", synthetic_rows(4, 1, fmt="inst"))
    for config, expected in (
            (LoraConfig(recipe="herrsimian-8b"), "sized for 1 CUDA GPU"),
            (LoraConfig(recipe="herrsimian-8b", allow_cpu=True), "format 'herrsimian'")):
        hp = config.resolved()
        started = time.perf_counter()
        done = run_trainer([python(), "-m", "gcrp_assets.trainer.train"],
                           extras_for(data, tiny_model_dir, tmp_path / "out", hp), timeout=120)
        assert done.returncode != 0 and expected in done.stderr, done.stderr[-2000:]
        assert "Loading weights" not in done.stderr and time.perf_counter() - started < 60
    assert "Re-materialize tokenized_parquet with `format: herrsimian`" in format_problem(hp, {"inst"})
    assert format_problem(hp, {"herrsimian"}) is None
    assert format_problem(LoraConfig().resolved(), {"chatml"}) is None  # smoke: any format


def test_wsd_holds_the_peak_for_three_epochs_then_drops_to_a_quarter_until_the_end():
    import torch
    from transformers import get_scheduler

    hp = LoraConfig(recipe="herrsimian-8b").resolved()
    per_epoch = steps_per_epoch(n_rows=10, batch_size=1, world_size=1, accumulation=1)
    total = total_steps(hp, per_epoch)
    assert (per_epoch, total) == (10, 50)
    kwargs = scheduler_kwargs(hp, per_epoch)
    assert kwargs == {"num_decay_steps": 0, "min_lr_ratio": 0.25, "num_stable_steps": 30}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=hp["learning_rate"])
    # Exactly how the HF Trainer builds it (Trainer.create_scheduler).
    scheduler = get_scheduler(hp["lr_scheduler"], optimizer, num_warmup_steps=hp["warmup_steps"],
                              num_training_steps=total, scheduler_specific_kwargs=kwargs)
    lrs = []
    for _ in range(total):           # the rate each optimizer step 1..50 uses
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak, quarter = 9.5e-5, 9.5e-5 * 0.25
    for step in (1, 10, 20, 30):
        assert lrs[step - 1] == pytest.approx(peak), step
    for step in (31, 40, 50):
        assert lrs[step - 1] == pytest.approx(quarter), step
    assert [wsd_lr_ratio(s, 0, 30, 0, 0.25) for s in (0, 29, 30, 49)] == [1.0, 1.0, 0.25, 0.25]
    # With a decay phase: a cosine from the peak to 25 %, then flat.
    assert wsd_lr_ratio(35, 0, 30, 10, 0.25) == pytest.approx(0.625)


def test_batch_geometry_matches_the_trainer_count():
    assert steps_per_epoch(n_rows=13, batch_size=2, world_size=2, accumulation=2) == 2   # 7 rows/rank, 4 batches
    assert steps_per_epoch(n_rows=13, batch_size=2, world_size=1, accumulation=3) == 3   # 7 batches, 3 windows
    party = LoraConfig(recipe="party-12b").resolved()
    assert accumulation_steps(party, world_size=2) == 6 and accumulation_steps(party, world_size=4) == 3
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation_steps(party, world_size=5)


def test_launch_commands_for_one_process_torchrun_and_deepspeed():
    assert trainer_command(LoraConfig())[1:] == ["-m", "gcrp_assets.trainer.train"]
    torchrun = trainer_command(LoraConfig(launcher="torchrun", nproc_per_node=4))
    assert "--standalone" in torchrun and "--nproc_per_node=4" in torchrun and torchrun[-2:] == ["-m", "gcrp_assets.trainer.train"]
    nodes = trainer_command(LoraConfig(launcher="torchrun", nproc_per_node=8, nnodes=2, node_rank=1,
                                       master_addr="10.0.0.1", master_port=29400))
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=29400"} <= set(nodes)
    assert "--standalone" not in nodes
    ds = trainer_command(LoraConfig(recipe="party-12b"))
    assert ds[1:4] == ["-m", "deepspeed.launcher.runner", "--num_gpus=2"]
    assert ds[-3:] == ["--no_local_rank", "--module", "gcrp_assets.trainer.train"]
    ds_nodes = trainer_command(LoraConfig(recipe="party-12b", nnodes=2, node_rank=1, hostfile="/etc/hosts.ds"))
    assert {"--num_nodes=2", "--node_rank=1", "--no_ssh", "--hostfile=/etc/hosts.ds"} <= set(ds_nodes)
    with pytest.raises(dg.Failure, match="hostfile"):
        trainer_command(LoraConfig(recipe="party-12b", nnodes=2))


def test_deepspeed_json_is_zero2_without_offload_unless_asked():
    party = LoraConfig(recipe="party-12b").resolved()
    config = deepspeed_config(party, "bf16")
    assert config["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in config["zero_optimization"]
    assert config["bf16"]["enabled"] and config["train_micro_batch_size_per_gpu"] == "auto"
    assert "optimizer" not in config      # the Trainer's torch AdamW: nothing to JIT-compile
    offload = deepspeed_config({**party, "offload_optimizer": True}, "bf16")
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert offload["optimizer"]["type"] == "AdamW"   # DeepSpeedCPUAdam steps the offloaded states
    assert set(offload["optimizer"]["params"].values()) == {"auto"}   # hyperparameters from the Trainer
    zero3 = deepspeed_config({**party, "zero_stage": 3, "load_in_8bit": False}, "fp32")
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def _store(tmp_path):
    from gcrp_assets.orchestration.resources import ArtifactStore

    return ArtifactStore(root=str(tmp_path / "artifacts"))
