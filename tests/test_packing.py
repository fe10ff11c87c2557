"""shared_prefix trees compute exactly the per_turn loss and gradients with far fewer tokens."""
import dataclasses

import pytest

from conftest import REAL_SAMPLE, SHAPED_TRAIN, require
from psydt_lora.data.dialogues import read_dialogues
from psydt_lora.data.packing import SampleCollator, fill_rows, merge_features, tree_block_mask, tree_mask
from psydt_lora.data.sample_types import IGNORE_INDEX, Sample, Tree
from psydt_lora.data.samples import build_samples, build_training_samples
from psydt_lora.train.loss import batch_loss, fused_head


def real_dialogues():
    sample, _ = read_dialogues(require(REAL_SAMPLE))
    shaped, _ = read_dialogues(require(SHAPED_TRAIN), limit=4)
    # the long real record last, after the dialogues the span check runs on; exact also when truncated
    sample[0].index = 99
    return shaped + sample


@pytest.mark.parametrize("max_length", [4096, 700])
def test_every_branch_is_exactly_a_per_turn_sample(real_tokenizer, max_length):
    dialogues = real_dialogues()
    # the reference: per-reply samples each made whole from its own context (no packs involved)
    per_turn, pt_stats = build_samples(dialogues, real_tokenizer, max_length)
    packs, sp_stats = build_training_samples(dialogues, real_tokenizer, max_length, "shared_prefix")
    view, view_stats = build_training_samples(dialogues, real_tokenizer, max_length, "per_turn")
    assert all(type(t) is Tree for t in packs) and all(type(s) is Sample for s in view)
    # per_turn mode reads its samples out of the trees: the same samples, the same counts
    assert [(s.dialogue_index, s.turn_index, s.message_index, s.input_ids, s.labels) for s in view] == \
        [(s.dialogue_index, s.turn_index, s.message_index, s.input_ids, s.labels) for s in per_turn]
    assert view_stats == pt_stats
    rebuilt = []
    for p in packs:
        assert len(p.input_ids) <= max_length + max_length // 2  # the default pack length
        ends = [s for s, _ in p.branches[1:]] + [len(p.input_ids)]
        for (start, visible), end, turn in zip(p.branches, ends, p.turn_indices):
            ids = p.input_ids[:visible] + p.input_ids[start:end]
            labels = [IGNORE_INDEX] * visible + p.labels[start:end]
            assert p.position_ids[start:end] == list(range(visible, visible + end - start))
            rebuilt.append((p.dialogue_index, turn, ids, labels))
    assert rebuilt == [(s.dialogue_index, s.turn_index, s.input_ids, s.labels) for s in per_turn]
    assert sp_stats.supervised_tokens == pt_stats.supervised_tokens
    if max_length == 700:  # the real record is truncated and split into several windows
        assert pt_stats.truncated_history_samples > 0
        assert len([p for p in packs if p.dialogue_index == 0]) > 1


def test_token_savings_on_real_lengths(real_tokenizer):
    record, _ = read_dialogues(require(REAL_SAMPLE))
    shaped, _ = read_dialogues(require(SHAPED_TRAIN))
    for dialogues, factor in ((record, 6), (shaped, 3)):
        _, pt = build_training_samples(dialogues, real_tokenizer, 2048, "per_turn")
        _, sp = build_training_samples(dialogues, real_tokenizer, 2048, "shared_prefix")
        assert pt.tokens >= factor * sp.tokens, (pt.tokens, sp.tokens)
    assert (pt.tokens, sp.per_turn_tokens) == (219943, 219943)


def merged(samples, capacity):
    """The rows --packing makes of `samples`: several samples a row, up to `capacity` tokens."""
    feats = [s.features() for s in samples]
    rows = fill_rows([len(f["input_ids"]) for f in feats], capacity)
    assert any(len(r) > 1 for r in rows)  # the rows really hold several samples
    return [merge_features([feats[i] for i in r]) for r in rows]


def loss_and_grads(model, samples, collate, micro_batch=2, head="fused"):
    """One optimizer step's loss and gradients as the Trainer computes them: micro-batches accumulated,
    each loss summed over tokens and divided by the step's total supervised tokens (num_items_in_batch).
    head="fused": training's way (the head applied by the chunked loss at the supervised positions only);
    "kept": the kept logits through cross_entropy; "full": transformers' own loss on every position's
    logits (the reference)."""
    model.zero_grad()
    feats = [s if isinstance(s, dict) else s.features() for s in samples]
    n = sum(sum(1 for t in f["labels"][1:] if t != IGNORE_INDEX) for f in feats)
    total = 0.0
    for i in range(0, len(feats), micro_batch):
        loss = batch_loss(model, collate(feats[i:i + micro_batch]), n, head)
        loss.backward()
        total += loss.item()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    return total, grads


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [4096, 700])
def test_loss_and_lora_gradients_equal_per_turn(real_tokenizer, max_length):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(real_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=8192)
    model = get_peft_model(Qwen3ForCausalLM(config), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    for name, p in model.named_parameters():  # LoRA B starts at zero; make it non-zero so its path is exercised
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    shaped, record = real_dialogues()[-2:]
    # the real record's first 15 messages (7 replies, the real system prompt): half the per_turn tokens of the
    # whole record, still truncated and split into several windows at 700
    dialogues = [shaped, dataclasses.replace(record, messages=record.messages[:15])]
    per_turn, stats = build_samples(dialogues, real_tokenizer, max_length)  # each made whole from its own context
    packs, _ = build_training_samples(dialogues, real_tokenizer, max_length, "shared_prefix")
    if max_length == 700:
        assert stats.truncated_history_samples > 0 and len([p for p in packs if p.dialogue_index == 99]) > 1
    collate = SampleCollator(real_tokenizer.pad_token_id)
    assert fused_head(model) is not None  # the fused path really runs below (this torch has it)
    loss_a, grads_a = loss_and_grads(model, per_turn, collate, head="full")  # the reference objective
    # --packing: packs of both dialogues in one row, per_turn samples several a row; nothing sees another
    pack_rows, turn_rows = merged(packs, sum(len(p.input_ids) for p in packs)), merged(per_turn, 1500)
    for samples, head in ((per_turn, "fused"), (packs, "fused"), (packs, "kept"), (pack_rows, "fused"),
                          (turn_rows, "fused"), (turn_rows, "kept")):
        loss_b, grads_b = loss_and_grads(model, samples, collate, head=head)
        assert loss_b == pytest.approx(loss_a, rel=1e-5)
        assert grads_a.keys() == grads_b.keys() and grads_a
        for k in grads_a:
            scale = grads_a[k].abs().max().item()
            assert (grads_a[k] - grads_b[k]).abs().max().item() <= 1e-5 * max(scale, 1e-12) + 1e-9, k
    assert collate.padding_share() > 0  # per_turn batches of different lengths were padded, and it was counted


def test_dialogue_mode_supervises_every_reply_once(real_tokenizer):
    dialogues, _ = read_dialogues(require(REAL_SAMPLE))
    (sample,), stats = build_training_samples(dialogues, real_tokenizer, 4096, "dialogue")
    _, pt = build_training_samples(dialogues, real_tokenizer, 4096, "per_turn")
    assert stats.supervised_tokens == pt.supervised_tokens == 390
    learned = real_tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX])
    replies = [m["content"] + "<|im_end|>" for m in dialogues[0].messages if m["role"] == "assistant"]
    assert learned == "".join(replies)


def test_block_mask_is_the_tree_mask(real_tokenizer):
    """flex_attention's BlockMask (for --attn_implementation flex_attention) allows exactly what the
    4-D mask allows, on real packs batched with padding."""
    import torch
    from torch.nn.attention.flex_attention import create_mask

    packs, _ = build_training_samples(real_dialogues(), real_tokenizer, 700, "shared_prefix")
    per_turn, _ = build_samples(real_dialogues()[:2], real_tokenizer, 700)
    # single packs, packs merged into rows and per_turn samples merged into rows (--packing), with padding
    busiest = lambda rows: sorted(rows, key=lambda f: -len(f.get("starts") or [0]))[:2]  # noqa: E731
    feats = [p.features() for p in packs[:3]] + busiest(merged(packs[3:7], 2100)) + busiest(merged(per_turn, 1100))
    width = max(len(f["input_ids"]) for f in feats) + 5
    dense, pos = tree_mask(feats, width)
    block, block_pos = tree_block_mask(feats, width)
    assert torch.equal(create_mask(block.mask_mod, len(feats), 1, width, width, device="cpu"), dense)
    assert torch.equal(pos, block_pos) and block.shape == (len(feats), 1, width, width)
    assert not dense.all() and dense.any(-1).all()  # a real tree (not causal, not empty), every row sees something
    r = len(feats) - 2
    row = feats[r]  # per_turn samples in one row: each sees itself causally and nothing of the others
    bounds = row["starts"] + [len(row["input_ids"])]
    assert len(bounds) > 2 and len(feats[r - 2]["starts"]) > 1
    for a, b in zip(bounds, bounds[1:]):
        assert torch.equal(dense[r, 0, a:b, :len(row["input_ids"])],
                           torch.ones(b - a, len(row["input_ids"]), dtype=torch.bool).tril(a)
                           & (torch.arange(len(row["input_ids"])) >= a))


def test_fill_rows_places_every_sample_once_within_the_capacity():
    lengths = [700, 300, 1200, 50, 2000, 900, 400, 3500]
    rows = fill_rows(lengths, 2048)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 2048 for r in rows if len(r) > 1)
    assert [7] in rows  # longer than a row: alone
    assert len(rows) == 4 and rows == fill_rows(lengths, 2048)  # 9,050 tokens in 4 rows (5 would be first fit in order)


def test_merged_row_keeps_each_sample_and_predicts_none_from_another():
    a = {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}
    b = {"input_ids": [4, 5, 6, 7], "labels": [4, IGNORE_INDEX, 6, 7], "position_ids": [0, 1, 5, 6], "branches": [(2, 1)]}
    row = merge_features([a, b])
    assert row["input_ids"] == [1, 2, 3, 4, 5, 6, 7] and row["starts"] == [0, 3]
    assert row["labels"] == [IGNORE_INDEX, 2, 3, IGNORE_INDEX, IGNORE_INDEX, 6, 7]  # 4 would be predicted from a's 3
    assert row["position_ids"] == [0, 1, 2, 0, 1, 5, 6] and row["branches"] == [(5, 1)]


@pytest.mark.slow
def test_flex_attention_forward_gives_the_sdpa_loss(real_tokenizer):
    """The same packs through flex_attention with the BlockMask and through SDPA with the 4-D mask: the
    same loss (forward only -- PyTorch's flex_attention has no backward pass on the CPU; training with it
    is for CUDA, where bench/gpu_check.py measures it)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    packs, _ = build_training_samples(real_dialogues()[-2:], real_tokenizer, 700, "shared_prefix")
    config = Qwen3Config(vocab_size=len(real_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=8192)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    losses = {}
    for attn, block in (("sdpa", False), ("flex_attention", True)):
        model.config._attn_implementation = attn
        collate = SampleCollator(real_tokenizer.pad_token_id, block_mask=block)
        with torch.no_grad():
            losses[attn] = [batch_loss(model, collate([p.features()]), None).item() for p in packs[:2]]
    assert losses["flex_attention"] == pytest.approx(losses["sdpa"], rel=1e-5)
