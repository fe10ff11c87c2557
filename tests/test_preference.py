"""Preference optimisation on shared-prefix trees: the tree is exactly the inference prompt + each reply, and
loss and LoRA gradients equal the plain two-row computation and TRL's trainers, for every --pref_loss, on a
tiny random Qwen3 with the real tokenizer and vocabulary and real multi-turn counselling contexts."""
import copy
import json
import math

import pytest

from conftest import SHAPED_TRAIN, require
from psydt_lora.data.pairs import Preference
from psydt_lora.data.preference_samples import (PreferenceCollator, PreferenceDataset, build_preference_samples,
                                                with_system)
from psydt_lora.errors import PsyDTError
from psydt_lora.prompt import DEFAULT_SYSTEM, prompt_ids, render_prompt
from psydt_lora.train.loss import fused_head, head_detached
from psydt_lora.train.preference import (LOSSES, PreferenceConfig, batch_preference_loss, cached_reference_logps,
                                         leaf_logps, make_preference_trainer, preference_loss, reference_identity,
                                         reference_logps)

torch = pytest.importorskip("torch")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOL = 1e-5
FTX = 0.3


def real_prefs() -> list[Preference]:
    """Real multi-turn contexts (the system prompt, a round of history, then the client's turn): the
    counsellor's real reply chosen against a reply from another dialogue; the first prompt ranks three replies
    (two pairs, one tree). Short enough that TRL's full-vocabulary logits on every position stay cheap."""
    d = json.loads(require(SHAPED_TRAIN).read_text("utf-8"))
    prefs = [Preference(tuple(d[i]["messages"][:4]), d[i]["messages"][4]["content"],
                        d[i + 10]["messages"][2]["content"], f"pairs.jsonl#{i}", {}) for i in range(3)]
    prefs.append(Preference(prefs[0].messages, prefs[0].chosen, d[20]["messages"][4]["content"], "pairs.jsonl#3", {}))
    return prefs


def lora_params(model) -> dict:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def setup(real_tokenizer):
    """(tokenizer, prefs, trees, stats, LoRA model with non-zero B (so policy != base), its base reference)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = real_tokenizer
    prefs = real_prefs()
    trees, stats = build_preference_samples(prefs, tok, 2048)
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    model = get_peft_model(Qwen3ForCausalLM(config), LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                                                lora_dropout=0.0, target_modules=PROJECTIONS))
    with torch.no_grad():
        for name, p in lora_params(model).items():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ref = reference_logps(model, trees, tok.pad_token_id, "base")
    return tok, prefs, trees, stats, model, ref


def test_tree_is_the_inference_prompt_then_each_reply(setup):
    tok, prefs, trees, stats, _, _ = setup
    assert len(trees) == 3 and [len(t.branches) for t in trees] == [3, 2, 2] and trees[0].pairs == [(0, 1), (0, 2)]
    eot = tok.eos_token_id
    for tree, group in ((trees[0], prefs[0::3]), (trees[1], prefs[1:2]), (trees[2], prefs[2:3])):
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *group[0].messages] \
            if group[0].messages[0]["role"] != "system" else list(group[0].messages)
        prompt = prompt_ids(tok, messages)  # exactly what inference renders
        assert render_prompt(tok, messages).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        for (c, r), p in zip(tree.pairs, group):
            for leaf, reply in ((c, p.chosen), (r, p.rejected)):
                ids, labels = tree.leaf_row(leaf)
                reply_ids = tok(reply, add_special_tokens=False)["input_ids"] + [eot]
                assert ids == prompt + reply_ids
                assert labels == [-100] * len(prompt) + reply_ids
    two_rows = sum(2 * len(prompt_ids(tok, list(p.messages))) + len(tok(p.chosen)["input_ids"])
                   + len(tok(p.rejected)["input_ids"]) + 2 for p in prefs)
    assert stats.two_row_tokens == two_rows and stats.pairs == 4
    assert stats.tokens == sum(len(t.input_ids) for t in trees) < two_rows / 2


def test_no_leaf_sees_another(setup):
    tok, _, trees, _, _, _ = setup
    batch = PreferenceCollator(tok.pad_token_id)([trees[0].features()])
    mask = batch["attention_mask"][0, 0]
    (s0, trunk), (s1, _), (s2, _) = trees[0].branches
    assert mask[s1:s2, :trunk].all() and not mask[s1:s2, s0:s1].any() and not mask[s2:, s0:s2].any()
    assert batch["position_ids"][0, s1].item() == batch["position_ids"][0, s2].item() == trunk
    assert batch["leaf_ids"][0, s0 + 1].item() == 0 and batch["leaf_ids"][0, s1].item() == -1  # -100 at a leaf's head


def two_row_sums(model, tok, prefs, disable_adapter=False):
    """Each pair as two plain rows (prompt + chosen, prompt + rejected), one forward each, full logits:
    (summed reply log-probs, token counts), chosen then rejected per pair."""
    import contextlib

    sums, counts = [], []
    for p in prefs:
        prompt = prompt_ids(tok, with_system(p.messages, DEFAULT_SYSTEM))
        for reply in (p.chosen, p.rejected):
            target = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([prompt + target])
            with model.disable_adapter() if disable_adapter else contextlib.nullcontext():
                logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            sums.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(target)[:, None]).double().sum())
            counts.append(len(target))
    return torch.stack(sums), torch.tensor(counts, dtype=torch.float64)


def grads_of(model, loss) -> dict:
    model.zero_grad()
    loss.backward()
    out = {n: p.grad.detach().clone() for n, p in lora_params(model).items()}
    model.zero_grad()
    return out


def assert_grads_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    worst = max((a[n] - b[n]).abs().max().item() for n in a)
    assert worst <= TOL, worst
    assert max(g.abs().max().item() for g in a.values()) > 100 * TOL  # the gradients compared are not all ~0


def tree_loss_and_grads(setup, config, n_trees=None):
    tok, _, trees, _, model, ref = setup
    batch = PreferenceCollator(tok.pad_token_id)(list(PreferenceDataset(trees, ref))[:n_trees])
    loss, metrics = batch_preference_loss(model, batch, config)
    return loss.item(), grads_of(model, loss), metrics


def grads_kept(model, loss) -> dict:
    """LoRA gradients of `loss`, keeping the graph (one forward serves every loss)."""
    params = lora_params(model)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()), retain_graph=True)))


@pytest.mark.slow
def test_tree_equals_two_rows_for_every_loss(setup):
    """One forward of the trees (the training path: fused head, per-leaf sums) and one of the plain rows;
    each loss, its metrics and its LoRA gradients from both."""
    tok, prefs, trees, _, model, ref_tree = setup
    batch = PreferenceCollator(tok.pad_token_id)(list(PreferenceDataset(trees, ref_tree)))
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "leaf_ids", "pairs", "ref_logps")}
    head = fused_head(model)
    with head_detached(model, head):
        states = model(**inputs).logits
    tree_sums, tree_counts = leaf_logps(states, batch["labels"], batch["leaf_ids"], int(batch["leaf_ids"].max()) + 1, head)
    prefs = [prefs[0], prefs[3], prefs[1], prefs[2]]  # the trees' pair order: the first prompt's two pairs first
    sums, counts = two_row_sums(model, tok, prefs)
    with torch.no_grad():
        ref, _ = two_row_sums(model, tok, prefs, disable_adapter=True)
    pairs = torch.arange(2 * len(prefs)).reshape(-1, 2)
    for loss_type in LOSSES:
        config = PreferenceConfig(loss=loss_type, ftx=FTX)
        tree_loss, metrics = preference_loss(config, tree_sums, tree_counts, batch["pairs"], batch["ref_logps"])
        loss, rows_metrics = preference_loss(config, sums, counts, pairs, ref)
        assert abs(loss.item() - tree_loss.item()) <= TOL and loss.item() != pytest.approx(math.log(2), abs=1e-3)
        for k in metrics:
            assert torch.allclose(metrics[k], rows_metrics[k], atol=TOL), (loss_type, k)
        assert_grads_close(grads_kept(model, tree_loss), grads_kept(model, loss))


def trl_trainer(loss_type, model, tok, data, out):
    """TRL's trainer for `loss_type` with our settings: plain-text prompt (our rendered prompt), the reply
    (TRL appends <|im_end|>), one pair a batch, no truncation, no dropout, no gradient checkpointing; for DPO
    and IPO with pref_ftx as TRL's "sft" loss beside it."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    common = dict(output_dir=str(out), per_device_train_batch_size=1, beta=0.1, report_to="none", use_cpu=True,
                  max_length=None if loss_type in ("sigmoid", "ipo") else 8192, gradient_checkpointing=False,
                  disable_dropout=True)
    dataset = datasets.Dataset.from_list(data)
    if loss_type in ("sigmoid", "ipo"):  # pref_ftx is TRL's "sft" term (the chosen reply's mean NLL) beside it
        args = trl.DPOConfig(loss_type=[loss_type, "sft"], loss_weights=[1.0, FTX], **common)
        return trl.DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    if loss_type == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=0.5, **common)
        return CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class ReplyNLLORPOTrainer(ORPOTrainer):
        """TRL's ORPO with its NLL term on the chosen reply only (LLaMA-Factory's, ours) -- TRL's own average
        log-prob of the chosen reply; TRL's ORPO takes the NLL over the prompt as well."""

        def concatenated_forward(self, model, batch):
            out = list(super().concatenated_forward(model, batch))
            out[4] = -out[0].mean()
            return tuple(out)

    return ReplyNLLORPOTrainer(model=model, args=ORPOConfig(**common), train_dataset=dataset, processing_class=tok)


def trl_ids(trainer, loss_type, i):
    """TRL's tokenisation of pair i as (prompt + chosen, prompt + rejected)."""
    row = trainer.train_dataset[i]
    if loss_type in ("sigmoid", "ipo"):
        return row["prompt_ids"] + row["chosen_ids"], row["prompt_ids"] + row["rejected_ids"]
    return row["chosen_input_ids"], row["rejected_input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", LOSSES)
def test_tree_equals_trl(setup, loss_type, tmp_path):
    tok, prefs, trees, _, model, _ = setup
    ftx = FTX if loss_type in ("sigmoid", "ipo") else 0.0
    # the first prompt's tree: one prompt, three replies, two pairs (TRL: two rows a pair, ~15 s a trainer here)
    tree_loss, tree_grads, _ = tree_loss_and_grads(setup, PreferenceConfig(loss=loss_type, ftx=ftx), n_trees=1)
    prefs = [prefs[0], prefs[3]]
    data = [{"prompt": render_prompt(tok, with_system(p.messages, DEFAULT_SYSTEM)), "chosen": p.chosen,
             "rejected": p.rejected} for p in prefs]
    theirs = copy.deepcopy(model)
    trainer = trl_trainer(loss_type, theirs, tok, data, tmp_path)
    if "ref" in theirs.peft_config:  # TRL copies an existing adapter as its reference; ours here is the base
        theirs.delete_adapter("ref")
    leaves = [(0, 0, 1), (0, 0, 2)]  # (tree, chosen leaf, rejected leaf) of each pair
    for i, (t, c, r) in enumerate(leaves):  # TRL trains on exactly our token ids
        assert trl_ids(trainer, loss_type, i) == (trees[t].leaf_row(c)[0], trees[t].leaf_row(r)[0])
    total = 0.0
    for batch in trainer.get_train_dataloader():  # one pair a batch: TRL's loss per pair, averaged here
        loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)) / len(prefs)
        loss.backward()
        total += loss.item()
    assert abs(total - tree_loss) <= TOL
    names = {n.replace(".default", ""): g for n, g in tree_grads.items()}
    trl_grads = {n.replace(".default", ""): p.grad for n, p in lora_params(theirs).items()}
    assert_grads_close(names, trl_grads)


def first_logged_loss(model, tok, trees, ref, config, tmp_path) -> float:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, logging_steps=1, per_device_train_batch_size=2,
                             learning_rate=1e-3, report_to="none", use_cpu=True, remove_unused_columns=False,
                             save_strategy="no")
    trainer, _ = make_preference_trainer(model, tok, args, config, PreferenceDataset(trees, ref))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert {"rewards/chosen", "rewards/margins", "rewards/accuracies"} <= logged[0].keys()
    return logged[0]["loss"]


@pytest.mark.slow
def test_first_loss_is_ln2_from_base_and_from_sft_adapter(setup, tmp_path):
    """Policy == reference at step 0: from the base (fresh LoRA, adapter disabled as the reference) and from
    an SFT adapter (non-zero LoRA, the adapter itself as the reference), with LoRA dropout in the config."""
    from peft import LoraConfig, get_peft_model

    tok, _, trees, _, sft_model, _ = setup
    config = PreferenceConfig(loss="sigmoid")
    base = copy.deepcopy(sft_model).unload()  # the bare base (LoRA layers removed, not merged)
    fresh = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.1,
                                            target_modules=PROJECTIONS))
    ref = reference_logps(fresh, trees, tok.pad_token_id, "base")
    assert first_logged_loss(fresh, tok, trees, ref, config, tmp_path / "base") == pytest.approx(math.log(2), abs=1e-6)
    # the SFT adapter (non-zero B) with LoRA dropout 0.1 in its config: preference training switches it off
    sft = get_peft_model(copy.deepcopy(sft_model).unload(), LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                                                       lora_dropout=0.1, target_modules=PROJECTIONS))
    sft.load_state_dict({n: p.detach().clone() for n, p in lora_params(sft_model).items()}, strict=False)
    assert all(torch.equal(p, lora_params(sft_model)[n]) for n, p in lora_params(sft).items())
    ref = reference_logps(sft, trees, tok.pad_token_id, "adapter")
    wrong = reference_logps(sft, trees, tok.pad_token_id, "base")  # the bare base: not the SFT model
    batch = PreferenceCollator(tok.pad_token_id)(list(PreferenceDataset(trees, wrong)))
    sft.eval()  # no dropout here: only the reference differs
    assert batch_preference_loss(sft, batch, config)[0].item() != pytest.approx(math.log(2), abs=1e-3)
    sft.train()
    assert first_logged_loss(sft, tok, trees, ref, config, tmp_path / "sft") == pytest.approx(math.log(2), abs=1e-6)


def test_orpo_odds_ratio_where_replies_are_likely():
    """ORPO's log odds ratio, checked by hand where it differs from the log-prob ratio (mean log-probs near 0)."""
    c, r = torch.tensor([-0.2, -1.5], dtype=torch.float64), torch.tensor([-0.9, -0.05], dtype=torch.float64)
    loss, _ = preference_loss(PreferenceConfig(loss="orpo", beta=0.1), torch.cat([c, r]), torch.ones(4),
                              torch.tensor([[0, 2], [1, 3]]))
    by_hand = []
    for lc, lr in zip(c.tolist(), r.tolist()):
        odds = math.log(math.exp(lc) / (1 - math.exp(lc))) - math.log(math.exp(lr) / (1 - math.exp(lr)))
        by_hand.append(-lc - 0.1 * math.log(1 / (1 + math.exp(-odds))))
    assert loss.item() == pytest.approx(sum(by_hand) / 2, abs=1e-12)


def test_reference_cache_is_reused_and_keyed_by_the_reference(setup, tmp_path):
    _, _, trees, _, _, ref = setup
    calls = []

    def compute():
        calls.append(1)
        return ref

    base = reference_identity({"model_type": "qwen3", "hidden_size": 64}, "base")
    assert cached_reference_logps(tmp_path, trees, base, compute, say=lambda *_: None) == ref
    assert cached_reference_logps(tmp_path, trees, base, compute, say=lambda *_: None) == ref
    assert len(calls) == 1  # the second run (a resume) reads the file
    adapter = tmp_path / "sft"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    other = reference_identity({"model_type": "qwen3", "hidden_size": 64}, "adapter", adapter)
    cached_reference_logps(tmp_path, trees, other, compute, say=lambda *_: None)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-2")
    changed = reference_identity({"model_type": "qwen3", "hidden_size": 64}, "adapter", adapter)
    cached_reference_logps(tmp_path, trees, changed, compute, say=lambda *_: None)
    assert len(calls) == 3 and len(list(tmp_path.glob("reference-logps-*.json"))) == 3


def test_a_context_not_ending_on_the_clients_turn_is_named(real_tokenizer):
    p = real_prefs()[1]
    bad = Preference(p.messages + ({"role": "assistant", "content": p.chosen},), p.chosen, p.rejected, "pairs.jsonl#7", {})
    with pytest.raises(PsyDTError, match="pairs.jsonl#7"):
        build_preference_samples([real_prefs()[0], bad], real_tokenizer, 2048)


@pytest.mark.parametrize("kwargs, word", [({"loss": "kto"}, "--pref_loss"), ({"beta": 0}, "--pref_beta"),
                                          ({"ftx": -1}, "--pref_ftx"), ({"loss": "sigmoid", "reference": "none"}, "orpo")])
def test_bad_preference_settings_are_named(kwargs, word):
    with pytest.raises(PsyDTError, match=word):
        PreferenceConfig(**kwargs)
    assert not PreferenceConfig(loss="simpo", reference="none").needs_reference


def test_truncation_keeps_the_latest_round_for_every_leaf(real_tokenizer):
    """A prompt too long for max_length loses its oldest rounds, the same ones for every leaf (SFT's rule)."""
    tok = real_tokenizer
    prefs = real_prefs()[:1]
    full = prompt_ids(tok, with_system(prefs[0].messages, DEFAULT_SYSTEM))
    short, long = sorted(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in (prefs[0].chosen, prefs[0].rejected))
    assert short < long
    max_length = len(full) + short + 1  # the whole prompt fits beside the shorter reply, not beside the longer
    trees, stats = build_preference_samples(prefs, tok, max_length)
    assert stats.truncated_history_prompts == 1 and stats.dropped_rounds >= 1
    assert stats.truncated_reply_leaves == 0  # rounds dropped for the longest reply: no reply is cut
    chosen, rejected = (trees[0].leaf_row(k)[0] for k in trees[0].pairs[0])
    prompt_len = trees[0].branches[0][1] + 1
    assert chosen[:prompt_len] == rejected[:prompt_len] and len(chosen[:prompt_len]) < len(full)
    assert max(len(chosen), len(rejected)) <= max_length
    last_user = prefs[0].messages[-1]["content"]
    assert last_user in tok.decode(chosen[:prompt_len]) and prefs[0].messages[1]["content"] not in tok.decode(chosen)
