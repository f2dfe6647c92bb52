"""Padding-free packing: the layout, no attention across samples, and the same loss (and gradients) as the
samples scored one by one and as a padded batch."""

import pytest
import torch

from gcrp_assets.lib.training.packing import (PACKED_ATTENTION, Collator, attention_for, pack, pad,
                                              padding_waste)
from gcrp_assets.lib.formats.tokenization import IGNORE
from gcrp_assets_tests.test_training_support import synthetic_rows


@pytest.fixture(scope="module")
def rows():
    return synthetic_rows(n_train=3, n_eval=0, seed=3, lengths=(20, 90))


def _model(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM

    if attn == PACKED_ATTENTION:
        attention_for(True)   # registers sdpa_packed
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False   # as in training: a cache would switch off packed-sequence detection
    return model.eval()


def _per_sample_loss(model, rows):
    """Token-weighted mean over every trained token, each sample scored alone."""
    total = count = 0.0
    for row in rows:
        out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
        n = sum(label != IGNORE for label in row["labels"][1:])
        total += out.loss.item() * n
        count += n
    return total / count


def test_packed_layout_restarts_positions_and_never_predicts_across_a_boundary(rows):
    batch = pack(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert batch["input_ids"].shape == (1, sum(lengths))
    starts = [0, lengths[0], lengths[0] + lengths[1]]
    assert batch["cu_seq_lens_q"].tolist() == starts + [sum(lengths)] and batch["max_length_q"] == max(lengths)
    positions = batch["position_ids"][0].tolist()
    assert [positions[s] for s in starts] == [0, 0, 0] and positions[starts[1] - 1] == lengths[0] - 1
    assert all(batch["labels"][0, s].item() == IGNORE for s in starts)
    # Logits only where a trained token is predicted; shift_labels are exactly those next tokens.
    labels = batch["labels"][0]
    keep = batch["logits_to_keep"]
    assert torch.equal(batch["shift_labels"][0], labels[keep + 1])
    assert int((labels[1:] != IGNORE).sum()) == keep.numel()


@pytest.mark.parametrize("attn", [PACKED_ATTENTION, "sdpa", "eager"])
def test_packed_loss_equals_the_per_sample_losses(tiny_model_dir, rows, attn):
    """sdpa_packed reads the cu_seq_lens kwargs; sdpa/eager build transformers' block-diagonal mask from the
    restarting position_ids. All three equal the samples scored one by one, and the padded batch."""
    model = _model(tiny_model_dir, attn)
    with torch.no_grad():
        expected = _per_sample_loss(model, rows)
        packed = model(**pack(rows)).loss.item()
        packed_all_logits = model(**pack(rows, trained_logits_only=False)).loss.item()
        positions_only = {k: v for k, v in pack(rows, False).items() if k in ("input_ids", "labels", "position_ids")}
        by_positions = model(**positions_only).loss.item()
    padded = _model(tiny_model_dir, "sdpa")
    with torch.no_grad():
        padded_loss = padded(**pad(rows, pad_id=2)).loss.item()
    for value in (packed, packed_all_logits, by_positions, padded_loss):
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_packed_gradients_equal_padded_gradients(tiny_model_dir, rows):
    grads = []
    for attn, batch in ((PACKED_ATTENTION, pack(rows)), ("sdpa", pad(rows, pad_id=2))):
        model = _model(tiny_model_dir, attn)
        model(**batch).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_no_attention_crosses_a_sample_boundary(tiny_model_dir, rows):
    model = _model(tiny_model_dir, PACKED_ATTENTION)
    changed = [dict(rows[0], input_ids=[1] + [t + 7 for t in rows[0]["input_ids"][1:]]), rows[1], rows[2]]
    with torch.no_grad():
        a = model(**pack(rows, trained_logits_only=False)).logits
        b = model(**pack(changed, trained_logits_only=False)).logits
    first = len(rows[0]["input_ids"])
    assert not torch.allclose(a[:, :first], b[:, :first])
    assert torch.allclose(a[:, first:], b[:, first:], atol=1e-5)   # later samples never saw the first one


def test_collator_counts_real_tokens_and_padding_of_train_rows_only():
    rows = [{"input_ids": [1] * n, "labels": [1] * n, "split": "train"} for n in (10, 30)]
    evals = [{"input_ids": [1] * 50, "labels": [1] * 50, "split": "eval"}]
    packed, padded = Collator(packing=True, pad_id=0), Collator(packing=False, pad_id=0)
    for collator in (packed, padded):
        collator(rows)
        collator(evals)
    assert (packed.counts.real, packed.counts.slots, packed.counts.padded_slots) == (40, 40, 60)
    assert (padded.counts.real, padded.counts.slots) == (40, 60)
    assert packed.counts.padding_waste == 0 and padded.counts.padding_waste == pytest.approx(1 / 3)
    assert packed.counts.padding_waste_if_padded == pytest.approx(1 / 3)
    assert padding_waste([10, 30, 20, 20], batch_size=2) == pytest.approx(1 - 80 / 100)
    assert "attention_mask" in padded(rows) and "attention_mask" not in packed(rows)
