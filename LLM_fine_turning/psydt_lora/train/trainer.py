"""The Hugging Face Trainer as training uses it: its arguments, the loss wiring, callbacks, the run itself."""
import math
from pathlib import Path

from psydt_lora.train.checkpoints import checkpoint_step, load_checkpoint_adapter
from psydt_lora.train.progress import make_progress_callback
from psydt_lora.train.ranks import is_main_process, world_size
from psydt_lora.train.signals import make_stop_callback
from psydt_lora.train.tracking import make_swanlab_callback, resolve_swanlab_mode


def planned_steps(n_samples: int, batch_size: int, accumulation: int, epochs: float, max_steps: int) -> int:
    """Optimizer steps the Trainer will run, computed the way it computes them (per process)."""
    if max_steps > 0:
        return max_steps
    batches = math.ceil(n_samples / (batch_size * world_size()))
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(epochs * per_epoch)


# CLI flags named like a TrainingArguments field that the run sets itself rather than passing through
OWN_HANDLING = ("output_dir", "report_to", "do_eval", "eval_steps", "gradient_checkpointing", "resume_from_checkpoint")


def passed_through(args) -> list[str]:
    """The CLI flags that go to TrainingArguments as they are: every flag named like one of its fields
    (so a new Trainer option is one `add_argument`), except OWN_HANDLING."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return sorted(k for k in vars(args) if k in names and k not in OWN_HANDLING)


def training_arguments(args, reporters, dtype, device: str, do_eval: bool):
    """TrainingArguments: the passed-through flags, then what the run decides (precision from the
    resolved dtype, evaluation only when there is eval data, activation checkpointing done by PEFT)."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        **{k: getattr(args, k) for k in passed_through(args)},
        output_dir=str(args.output_dir),
        logging_first_step=True,
        save_strategy="steps",
        eval_strategy="steps" if do_eval else "no",
        eval_steps=args.eval_steps if do_eval else None,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        report_to=reporters or "none",
        remove_unused_columns=False,
        prediction_loss_only=True,  # evaluation keeps the loss only, not every position's logits
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        dataloader_pin_memory=device == "cuda",
        use_cpu=device == "cpu",
        ddp_find_unused_parameters=False,
    )


def make_trainer_class():
    import torch
    from transformers import Trainer

    from psydt_lora.train.loss import head_detached

    class SupervisedTrainer(Trainer):
        """The Trainer, with the model's LM head detached during each loss computation: the loss
        (`loss.SupervisedLoss`) applies it, chunked, at the supervised positions only."""

        def compute_loss_context_manager(self):
            stack = super().compute_loss_context_manager()
            stack.enter_context(head_detached(self.model, self.compute_loss_func.head))
            return stack

        def _prepare_inputs(self, inputs):
            """Tensors go to the device as usual; a flex_attention BlockMask (not a tensor) too."""
            mask = inputs.get("attention_mask")
            inputs = super()._prepare_inputs(inputs)
            if mask is not None and not isinstance(mask, torch.Tensor):
                inputs["attention_mask"] = mask.to(self.args.device)
            return inputs

    return SupervisedTrainer


def build_trainer(args, model, tokenizer, train_set, eval_set, data_stats, device: str, dtype):
    """(Trainer, collator, stop callback): our collator and loss, our progress printer."""
    from transformers.trainer_callback import ProgressCallback

    from psydt_lora.train.loss import SupervisedLoss, fused_head
    from psydt_lora.data.packing import SampleCollator

    reporters, callbacks, stop = make_callbacks(args, data_stats)
    collator = SampleCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if device == "cuda" else None,
                            block_mask=args.attn_implementation == "flex_attention")
    trainer = make_trainer_class()(
        model=model,
        args=training_arguments(args, reporters, dtype, device, eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        compute_loss_func=SupervisedLoss(fused_head(model)),  # logits only where the loss is (the collator says where)
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(make_progress_callback())
    return trainer, collator, stop


def make_callbacks(args, data_stats) -> tuple[list, list, object]:
    """(Trainer reporters, callbacks, the stop-on-signal callback). SwanLab through its own callback."""
    reporters = [r.strip() for r in args.report_to.split(",") if r.strip() and r.strip() != "none"]
    callbacks = []
    if "swanlab" in reporters:
        reporters.remove("swanlab")
        if is_main_process():
            config = {**vars(args), "data": {k: {kk: vv for kk, vv in v.items() if kk != "notes"} for k, v in data_stats.items()}}
            callbacks.append(make_swanlab_callback(args.swanlab_project, args.swanlab_run_name,
                                                   resolve_swanlab_mode(args.swanlab_mode), Path(args.output_dir) / "swanlog", config))
    stop = make_stop_callback()
    return reporters, callbacks + [stop], stop


def run(trainer, stop, resume: str | None, steps: int):
    """Train, resuming from `resume`; a checkpoint already at the last step is only loaded (the final save
    did not happen). Returns the Trainer's result, or None when nothing was trained."""
    from transformers import TrainerState

    main = is_main_process()
    if resume and checkpoint_step(resume) >= steps:
        if main:
            print(f"[续训] {resume} 已是最后一步，只补上保存 adapter", flush=True)
        load_checkpoint_adapter(trainer.model, resume)
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        return None
    if resume and main:
        print(f"[续训] 从检查点 {resume} 继续训练（--resume_from_checkpoint none 可从头开始）", flush=True)
    with stop.installed():  # on every rank: a launcher's SIGTERM reaches them all
        return trainer.train(resume_from_checkpoint=resume)


def final_eval(trainer) -> dict:
    """The evaluation at the last step: the Trainer already runs one there; only run it when it did not."""
    step = trainer.state.global_step
    done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == step]
    return dict(done[-1]) if done else trainer.evaluate()

