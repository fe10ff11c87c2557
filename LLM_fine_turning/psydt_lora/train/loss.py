"""The training loss: cross-entropy on the supervised positions only, the LM head applied by the loss.

The collator gives the model `logits_to_keep` = the positions whose next token is supervised (about a
quarter of a shared_prefix tree), so nothing is computed for the rest. On those positions the head
(151,936 logits a position for Qwen3) is applied by PyTorch's chunked `linear_cross_entropy`: the model's
forward stops at the last hidden states (its head is detached for the call), and the loss computes the
logits a chunk of positions at a time, with their gradient, never holding all of them. Same value and
gradients as transformers' loss on full logits (summed cross-entropy, divided by the step's supervised
tokens); tests compare all three ways. Where the fused op cannot run (no `linear_cross_entropy` in this
torch, ZeRO-3's partitioned weights, a head with a bias or LoRA on it) the kept logits go through
`cross_entropy` instead.
"""
from contextlib import contextmanager

from psydt_lora.data.packing import IGNORE_INDEX, supervised_positions

HEAD_CHUNK = 256  # positions per chunk: a 150 MB fp32 logits buffer at Qwen3's vocabulary (fastest here on CPU)


def causal_lm(model):
    """The transformers CausalLM inside DDP / DeepSpeed / PEFT wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def fused_head(model):
    """The LM head module if the loss can apply it itself, else None (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    if not hasattr(F, "linear_cross_entropy"):
        return None
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            return None
    except ImportError:
        pass
    head = causal_lm(model).get_output_embeddings()
    return head if type(head) is torch.nn.Linear and head.bias is None else None


def describe_head(head) -> str:
    if head is None:
        return "只在被监督的位置计算 logits（cross_entropy）"
    return f"只在被监督的位置计算 logits，PyTorch 分块 linear_cross_entropy（每块 {HEAD_CHUNK} 个位置，不保存完整 logits）"


@contextmanager
def head_detached(model, head):
    """For one forward: the model returns its last hidden states at the kept positions as `logits`."""
    if head is None:
        yield
        return
    import torch

    lm = causal_lm(model)
    lm.set_output_embeddings(torch.nn.Identity())
    try:
        yield
    finally:
        lm.set_output_embeddings(head)


class SupervisedLoss:
    """The Trainer's `compute_loss_func`: summed cross-entropy over the supervised tokens, divided by the
    step's supervised-token count when the Trainer gives it (else their number). With `head`, the
    outputs hold hidden states (see `head_detached`) and the loss applies the head, chunked."""

    def __init__(self, head=None):
        self.head = head

    def __call__(self, outputs, labels, num_items_in_batch=None):
        import torch.nn.functional as F

        keep = supervised_positions(labels)
        states = outputs.logits
        target = labels[:, 1:][:, keep].to(states.device).reshape(-1)
        flat = states.reshape(-1, states.shape[-1])
        supervised = target != IGNORE_INDEX
        if self.head is None:
            total = F.cross_entropy(flat.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
        else:
            import torch

            # kept positions are supervised in *some* row of the batch; the head runs on each row's own only
            options = torch.nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=HEAD_CHUNK)
            total = F.linear_cross_entropy(flat[supervised], self.head.weight, target[supervised],
                                           ignore_index=IGNORE_INDEX, reduction="sum", options=options)
        if num_items_in_batch is None:
            num_items_in_batch = supervised.sum()
        if isinstance(num_items_in_batch, int):
            return total / max(num_items_in_batch, 1)
        return total / num_items_in_batch.to(total.device).clamp(min=1)  # no host sync on a GPU


def batch_loss(model, batch: dict, num_items_in_batch=None, head: str = "fused"):
    """The loss of one collated batch as training computes it (`head="fused"`), or with the kept logits
    through `cross_entropy` ("kept"), or transformers' own loss on every position's logits ("full": the
    reference the tests compare against)."""
    batch = dict(batch)
    if head == "full":
        batch.pop("logits_to_keep", None)
        return model(**batch, num_items_in_batch=num_items_in_batch).loss
    labels = batch.pop("labels")
    module = fused_head(model) if head == "fused" else None
    with head_detached(model, module):
        outputs = model(**batch)
    return SupervisedLoss(module)(outputs, labels, num_items_in_batch)
