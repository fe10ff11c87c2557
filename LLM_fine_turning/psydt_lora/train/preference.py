"""Preference optimisation (DPO, IPO, ORPO, SimPO) on shared-prefix trees (data.preference_samples).

The losses follow LLaMA-Factory's `pref_loss` (names, defaults, how log-probs are averaged):
    sigmoid  DPO: -log sigmoid(beta * ((c - r) - (c_ref - r_ref)))                 c, r: summed reply log-probs
    ipo      IPO: ((c - r) - (c_ref - r_ref) - 1 / (2 beta))^2                     c, r, refs: per-token means
    orpo     ORPO: -c + beta * -log sigmoid(log odds(c) - log odds(r))              per-token means, no reference
    simpo    SimPO: -log sigmoid(beta * (c - r) - simpo_gamma)                     per-token means, no reference
plus `ftx` x the chosen reply's mean negative log-likelihood (LLaMA-Factory's pref_ftx; 0 by default). The
step's loss is the mean over its pairs. Rewards: beta * (policy - reference) log-probs (the same log-probs the
loss uses), or beta * policy log-probs for the reference-free losses; margins = chosen - rejected rewards,
accuracy = share of pairs whose chosen reward is higher. (TRL's IPO is the same loss; its rewards use summed
log-probs. TRL's ORPO and SimPO (CPO, cpo_alpha 0) equal these per pair; with several pairs in a micro-batch
TRL's ORPO averages the NLL over the batch's tokens, this over pairs; and TRL's ORPO takes its NLL over the
prompt tokens too, LLaMA-Factory and this over the chosen reply only.)

Logits exist only at reply positions: the model runs with `logits_to_keep` (the collator's) and its LM head
detached (train.loss.head_detached); each reply token's log-prob comes from PyTorch's chunked
`linear_cross_entropy` (reduction "none") and is summed into its leaf.

The reference is computed ONCE, before training (`reference_logps`: eval mode, no gradient): from the base the
adapter is disabled; from an SFT adapter that adapter is left on (the policy starts from it, so the first loss
is ln 2 either way). The values -- each leaf's summed log-prob -- are kept in a JSON file named by the trees'
digest and the reference's identity (`reference_identity`: base signature + adapter file hash), reused on
resume. Dropout is switched off in the policy (as TRL and LLaMA-Factory do), so the policy at step 0 is the
reference exactly.
"""
import hashlib
import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from psydt_lora.data.packing import IGNORE_INDEX, supervised_positions
from psydt_lora.data.preference_samples import PreferenceCollator
from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_json
from psydt_lora.hub import sha256_file
from psydt_lora.train.loss import HEAD_CHUNK, fused_head, head_detached

LOSSES = ("sigmoid", "ipo", "orpo", "simpo")
REFERENCE_FREE = ("orpo", "simpo")
REFERENCES = ("base", "adapter", "none")  # adapter disabled / the adapter the policy starts from / no reference
BATCH_KEYS = ("leaf_ids", "pairs", "ref_logps")  # what the preference collator adds beside the model's inputs


@dataclass(frozen=True)
class PreferenceConfig:
    group = "preference"  # its name in the run record
    loss: str = "sigmoid"
    beta: float = 0.1
    ftx: float = 0.0
    simpo_gamma: float = 0.5
    reference: str = "base"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise PsyDTError(f"--pref_loss 是 {self.loss!r}，只能是 {' / '.join(LOSSES)}。")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise PsyDTError(f"--pref_beta 必须是正数（现在是 {self.beta}）。")
        if not (self.ftx >= 0 and math.isfinite(self.ftx)):
            raise PsyDTError(f"--pref_ftx 不能是负数（现在是 {self.ftx}）。")
        if not math.isfinite(self.simpo_gamma):
            raise PsyDTError(f"--simpo_gamma 必须是有限的数（现在是 {self.simpo_gamma}）。")
        if self.reference not in REFERENCES:
            raise PsyDTError(f"参考模型是 {self.reference!r}，只能是 {' / '.join(REFERENCES)}。")
        if self.needs_reference and self.reference == "none":
            raise PsyDTError(f"--pref_loss {self.loss} 需要参考模型；不要参考模型请用 orpo 或 simpo。")

    @property
    def needs_reference(self) -> bool:
        return self.loss not in REFERENCE_FREE

    @property
    def averaged(self) -> bool:
        """Whether the loss takes per-token mean log-probs (LLaMA-Factory: ipo, orpo, simpo) rather than sums."""
        return self.loss != "sigmoid"


# -- per-leaf log-probs -------------------------------------------------------------------------------------
def token_logps(states, labels, head=None):
    """(log-prob of each supervised reply token, where it is): `states` are the model's outputs at the
    collator's kept positions -- hidden states when `head` is given (the head applied here, chunked), else
    logits. Returns (logps (T,) float32, mask over the kept positions of the flattened batch)."""
    import torch
    import torch.nn.functional as F

    keep = supervised_positions(labels)
    target = labels[:, 1:][:, keep].to(states.device).reshape(-1)
    flat = states.reshape(-1, states.shape[-1])
    supervised = target != IGNORE_INDEX
    if head is None:
        nll = F.cross_entropy(flat[supervised].float(), target[supervised], reduction="none")
    else:
        options = torch.nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=HEAD_CHUNK)
        nll = F.linear_cross_entropy(flat[supervised], head.weight, target[supervised], reduction="none",
                                     options=options)
    return -nll.float(), keep, supervised


def leaf_logps(states, labels, leaf_ids, n_leaves: int, head=None):
    """(summed log-prob (n_leaves,), token count (n_leaves,)) of each leaf's reply, float64."""
    import torch

    logps, keep, supervised = token_logps(states, labels, head)
    leaves = leaf_ids[:, 1:][:, keep].to(logps.device).reshape(-1)[supervised]
    # summed in float64: a reply's sum (hundreds of tokens) minus its reference stays exact to float32's token error
    sums = torch.zeros(n_leaves, dtype=torch.float64, device=logps.device).index_add(0, leaves, logps.double())
    counts = torch.bincount(leaves, minlength=n_leaves).to(torch.float64)
    return sums, counts


# -- the losses ---------------------------------------------------------------------------------------------
def log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    import torch

    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def pair_losses(config: PreferenceConfig, chosen, rejected, ref_chosen=None, ref_rejected=None):
    """(per-pair losses, chosen rewards, rejected rewards) from the pairs' log-probs (sums or means, as the
    loss takes them) -- the formulas of the module docstring."""
    import torch.nn.functional as F

    b = config.beta
    if config.loss in ("sigmoid", "ipo"):
        chosen_rewards, rejected_rewards = b * (chosen - ref_chosen), b * (rejected - ref_rejected)
        delta = (chosen - rejected) - (ref_chosen - ref_rejected)
        losses = -F.logsigmoid(b * delta) if config.loss == "sigmoid" else (delta - 1 / (2 * b)) ** 2
    else:
        chosen_rewards, rejected_rewards = b * chosen, b * rejected
        if config.loss == "orpo":
            log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
            losses = -chosen - b * F.logsigmoid(log_odds)
        else:
            losses = -F.logsigmoid(b * (chosen - rejected) - config.simpo_gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def preference_loss(config: PreferenceConfig, sums, counts, pairs, ref_sums=None):
    """(the mean loss over the pairs, metrics as tensors) from each leaf's summed log-prob and token count;
    `pairs` (P, 2) are (chosen leaf, rejected leaf), `ref_sums` the reference's summed log-probs per leaf."""
    if config.needs_reference and ref_sums is None:
        raise ValueError("this loss needs the reference log-probs (reference_logps) in the batch")
    means = sums / counts.clamp(min=1)
    logps = means if config.averaged else sums
    c, r = pairs[:, 0].to(sums.device), pairs[:, 1].to(sums.device)
    refs = (None, None)
    if config.needs_reference:
        ref = ref_sums.to(sums.device, sums.dtype)
        ref = ref / counts.clamp(min=1) if config.averaged else ref
        refs = (ref[c], ref[r])
    losses, chosen_rewards, rejected_rewards = pair_losses(config, logps[c], logps[r], *refs)
    if config.ftx > 0:
        losses = losses - config.ftx * means[c]
    metrics = {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
               "rewards/margins": chosen_rewards - rejected_rewards,
               "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
               "logps/chosen": logps[c].detach(), "logps/rejected": logps[r].detach()}
    return losses.mean(), metrics


def batch_preference_loss(model, batch: dict, config: PreferenceConfig, head: str = "fused"):
    """(loss, metrics) of one collated preference batch as training computes it (`head="fused"`: the LM
    head applied by the loss, chunked), or with the kept logits through cross_entropy (`"kept"`)."""
    batch = dict(batch)
    extras = {k: batch.pop(k) for k in BATCH_KEYS if k in batch}
    labels = batch.pop("labels")
    module = fused_head(model) if head == "fused" else None
    with head_detached(model, module):
        outputs = model(**batch)
    n_leaves = int(extras["leaf_ids"].max()) + 1
    sums, counts = leaf_logps(outputs.logits, labels, extras["leaf_ids"], n_leaves, module)
    return preference_loss(config, sums, counts, extras["pairs"], extras.get("ref_logps"))


# -- the reference, once ------------------------------------------------------------------------------------
def reference_logps(model, trees, pad_id: int, reference: str, batch_size: int = 4) -> list[list[float]]:
    """Each tree's leaves' summed log-probs under the reference: the model in eval mode without gradients,
    its adapter disabled for `reference="base"`, left on for `"adapter"`. The model's mode is restored."""
    import torch

    collator, module = PreferenceCollator(pad_id), fused_head(model)
    device = next(model.parameters()).device
    context = model.disable_adapter() if reference == "base" else nullcontext()
    was_training, out = model.training, []
    model.eval()
    try:
        with torch.no_grad(), context, head_detached(model, module):
            for i in range(0, len(trees), batch_size):
                chunk = [trees[j] for j in range(i, min(i + batch_size, len(trees)))]
                batch = collator([t.features() for t in chunk])
                inputs = {k: v.to(device) for k, v in batch.items() if k not in BATCH_KEYS and k != "labels"}
                n_leaves = sum(len(t.branches) for t in chunk)
                sums, _ = leaf_logps(model(**inputs).logits, batch["labels"], batch["leaf_ids"], n_leaves, module)
                values = sums.cpu().tolist()
                for t in chunk:
                    out.append(values[:len(t.branches)])
                    values = values[len(t.branches):]
    finally:
        model.train(was_training)
    return out


def reference_identity(base_signature: dict, reference: str, adapter_dir=None) -> dict:
    """What decides the reference: the base model's signature and, for an adapter reference, its weights' hash."""
    identity = {"reference": reference, "base": base_signature}
    if reference == "adapter":
        weights = sorted(Path(adapter_dir).glob("adapter_model.*"))
        if not weights:
            raise PsyDTError(f"{adapter_dir} 里没有 adapter_model.safetensors：无法把它作为参考模型。")
        identity["adapter_sha256"] = sha256_file(weights[0])
    return identity


def trees_digest(trees) -> str:
    """A digest of the trees' tokens and layout (which leaves the cached values belong to)."""
    h = hashlib.sha256()
    for t in trees:
        h.update(json.dumps([t.input_ids, t.branches]).encode("ascii"))
    return h.hexdigest()


def reference_cache_file(cache_dir, trees, identity: dict) -> Path:
    key = hashlib.sha256(json.dumps([trees_digest(trees), identity], sort_keys=True).encode("utf-8")).hexdigest()
    return Path(cache_dir) / f"reference-logps-{key[:24]}.json"


def cached_reference_logps(cache_dir, trees, identity: dict, compute, say=print, write=True) -> list[list[float]]:
    """The reference log-probs from the cache file for these trees and this reference, else `compute()`d
    and written there (atomically; by the main process: `write`) for the next run or a resume."""
    path = reference_cache_file(cache_dir, trees, identity)
    if path.is_file():
        stored = json.loads(path.read_text("utf-8"))
        values = stored.get("logps")
        if stored.get("identity") == identity and isinstance(values, list) and len(values) == len(trees):
            say(f"[参考模型] 读取已缓存的参考 log-prob：{path}")
            return values
    say(f"[参考模型] 计算参考 log-prob（{len(trees)} 个提示词，只算一次，缓存到 {path}）")
    values = compute()
    if write:
        try:
            atomic_write_json(path, {"identity": identity, "logps": values})
        except OSError as err:  # an unwritable cache folder costs the next run a recomputation, nothing else
            say(f"[参考模型] 无法写入参考 log-prob 缓存（{err.strerror}），下次仍会重新计算")
    return values


# -- the Trainer ----------------------------------------------------------------------------------------------
def disable_dropout(model) -> None:
    """Every dropout of the model (LoRA's too) set to p=0: the policy at step 0 is the reference exactly."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def make_preference_trainer_class():
    from transformers import Trainer

    class PreferenceTrainer(Trainer):
        """The Trainer with the preference loss on tree batches; the metrics averaged into each log line."""

        def __init__(self, *args, preference: PreferenceConfig, **kwargs):
            super().__init__(*args, **kwargs)
            self.preference = preference
            self.head = fused_head(self.model)
            self.model_accepts_loss_kwargs = False  # the loss is a mean over pairs: the Trainer scales it for accumulation
            self.pref_metrics = {"train": {}, "eval": {}}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            extras = {k: inputs.pop(k) for k in BATCH_KEYS if k in inputs}
            labels = inputs.pop("labels")
            with head_detached(model, self.head):
                outputs = model(**inputs)
            n_leaves = int(extras["leaf_ids"].max()) + 1
            sums, counts = leaf_logps(outputs.logits, labels, extras["leaf_ids"], n_leaves, self.head)
            loss, metrics = preference_loss(self.preference, sums, counts, extras["pairs"], extras.get("ref_logps"))
            store = self.pref_metrics["train" if model.training else "eval"]
            for k, v in metrics.items():
                total, n = store.get(k, (0.0, 0))
                store[k] = (total + float(v.sum()), n + v.numel())
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
            prefix = "eval_" if mode == "eval" else ""
            for k, (total, n) in self.pref_metrics[mode].items():
                logs[prefix + k] = round(total / max(n, 1), 6)
            self.pref_metrics[mode] = {}
            return super().log(logs, *args, **kwargs)

    return PreferenceTrainer


def make_preference_trainer(model, tokenizer, training_args, config: PreferenceConfig, train_set, eval_set=None,
                            callbacks=(), pad_to_multiple_of: int | None = None):
    """(Trainer, collator) for a preference run: `train_set` / `eval_set` are data.preference_samples'
    PreferenceDataset (with the reference log-probs when the loss needs them); `training_args` the run's
    TrainingArguments (remove_unused_columns=False, as for SFT). Dropout is switched off in `model`."""
    disable_dropout(model)
    collator = PreferenceCollator(tokenizer.pad_token_id, pad_to_multiple_of)
    trainer = make_preference_trainer_class()(model=model, args=training_args, train_dataset=train_set,
                                              eval_dataset=eval_set, data_collator=collator, processing_class=tokenizer,
                                              callbacks=list(callbacks), preference=config)
    return trainer, collator
