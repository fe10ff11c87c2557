"""The Hugging Face Trainer as training uses it: its arguments, the loss wiring, callbacks, the run itself."""
import math
from dataclasses import fields
from pathlib import Path

from psydt_lora.data.packing import SampleCollator
from psydt_lora.files import honour_umask
from psydt_lora.run_record import settings_dict
from psydt_lora.train.checkpoints import ResumePlan, checkpoint_plan, checkpoint_step, load_checkpoint_adapter
from psydt_lora.train.config import TrainConfig, TrainerConfig
from psydt_lora.train.loss import SupervisedLoss, fused_head, head_detached
from psydt_lora.train.preference import make_preference_trainer
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


# TrainerConfig fields named like a TrainingArguments field that the run sets itself rather than passing through
OWN_HANDLING = ("output_dir", "eval_steps", "resume_from_checkpoint", "group_by_length")


def passed_through(config: TrainerConfig) -> list[str]:
    """The TrainerConfig fields that go to TrainingArguments as they are: every field named like one of its
    fields (so a new Trainer option is one field and one flag), except OWN_HANDLING."""
    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return sorted(f.name for f in fields(config) if f.name in names and f.name not in OWN_HANDLING)


def training_arguments(config: TrainerConfig, reporters, dtype, device: str, do_eval: bool):
    """TrainingArguments: the passed-through fields, then what the run decides (precision from the
    resolved dtype, evaluation only when there is eval data, activation checkpointing done by PEFT)."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        **{k: getattr(config, k) for k in passed_through(config)},
        output_dir=str(config.output_dir),
        logging_first_step=True,
        save_strategy="steps",
        eval_strategy="steps" if do_eval else "no",
        eval_steps=config.eval_steps if do_eval else None,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        report_to=reporters or "none",
        remove_unused_columns=False,
        prediction_loss_only=True,  # evaluation keeps the loss only, not every position's logits
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        dataloader_pin_memory=device == "cuda",
        use_cpu=device == "cpu",
        ddp_find_unused_parameters=False,
    )


def make_trainer_class():
    import torch
    from transformers import Trainer

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


def build_trainer(config: TrainConfig, model, tokenizer, train_set, eval_set, data_stats, device: str, dtype):
    """(Trainer, collator, stop callback): our collator and loss, our progress printer."""
    from transformers.trainer_callback import ProgressCallback

    reporters, callbacks, stop = make_callbacks(config, data_stats)
    arguments = training_arguments(config.trainer, reporters, dtype, device, eval_set is not None)
    pad_to = 8 if device == "cuda" else None
    if config.preference is not None:  # the same Trainer, the preference loss on tree batches
        trainer, collator = make_preference_trainer(model, tokenizer, arguments, config.preference, train_set, eval_set,
                                                    callbacks, pad_to)
    else:
        collator = SampleCollator(tokenizer.pad_token_id, pad_to_multiple_of=pad_to,
                                  block_mask=config.model.attn_implementation == "flex_attention")
        trainer = make_trainer_class()(
            model=model, args=arguments, train_dataset=train_set, eval_dataset=eval_set, data_collator=collator,
            processing_class=tokenizer, callbacks=callbacks,
            compute_loss_func=SupervisedLoss(fused_head(model)),  # logits only where the loss is (the collator says where)
        )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(make_progress_callback())
    return trainer, collator, stop


def make_callbacks(config: TrainConfig, data_stats) -> tuple[list, list, object]:
    """(Trainer reporters, callbacks, the stop-on-signal callback). SwanLab through its own callback."""
    tracking = config.tracking
    reporters = [r for r in tracking.report_to if r != "none"]
    callbacks = []
    if "swanlab" in reporters:
        reporters.remove("swanlab")
        if is_main_process():
            stats = {k: {kk: vv for kk, vv in v.items() if kk != "notes"} for k, v in data_stats.items()}
            swan_config = {**settings_dict(*config.parts()), "stage": config.stage, "data": stats}
            callbacks.append(make_swanlab_callback(tracking.swanlab_project, tracking.swanlab_run_name,
                                                   resolve_swanlab_mode(tracking.swanlab_mode),
                                                   config.trainer.output_path / "swanlog", swan_config))
    stop = make_stop_callback()
    return reporters, callbacks + [make_schedule_callback(), make_modes_callback(), stop], stop


def make_schedule_callback():
    """On resume the optimizer's learning rate is the checkpoint's -- 0 at the end of a finished run whose
    --max_steps / --num_train_epochs was raised. The Trainer rebuilds the scheduler for this run's total and
    fast-forwards it to the checkpoint's step (its state holds the step, not the total); before the first step
    the learning rates are set from it, so the run goes on as if this total had been planned from the start."""
    from transformers import TrainerCallback

    class ScheduleFromCheckpoint(TrainerCallback):
        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            if state.global_step > 0 and lr_scheduler is not None:
                schedule_at_step(lr_scheduler)

    return ScheduleFromCheckpoint()


def make_modes_callback():
    """The Trainer's checkpoints get the modes the umask gives, like everything else we write (safetensors and
    torch.save write some files 0600: another user or a container could not resume or serve from them)."""
    from transformers import TrainerCallback

    class CheckpointModes(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                honour_umask(folder)

    return CheckpointModes()


def schedule_at_step(scheduler) -> None:
    """The optimizer's learning rates set to what `scheduler` gives at the step it stands at (the same values
    on an ordinary resume; the new schedule's on an extended one). Schedules without a closed form
    (ReduceLROnPlateau, DeepSpeed's own) are left as they are."""
    import torch

    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the Trainer's scheduler
    if not isinstance(inner, torch.optim.lr_scheduler.LambdaLR):
        return
    rates = [base * fn(inner.last_epoch) for base, fn in zip(inner.base_lrs, inner.lr_lambdas)]
    for group, rate in zip(inner.optimizer.param_groups, rates):
        group["lr"] = rate
    inner._last_lr = rates  # what the Trainer logs


def run(trainer, stop, resume: ResumePlan, steps: int):
    """Train, resuming from the plan's checkpoint; a checkpoint already at the last step is only loaded (the
    final save did not happen). Returns the Trainer's result, or None when nothing was trained."""
    from transformers import TrainerState

    main = is_main_process()
    if resume.at_last_step:
        if main:
            print(f"[续训] {resume.checkpoint} 已是最后一步，只补上保存 adapter", flush=True)
        load_checkpoint_adapter(trainer.model, resume.checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(resume.checkpoint) / "trainer_state.json"))
        return None
    if resume.checkpoint and main:
        print(f"[续训] 从检查点 {resume.checkpoint} 继续训练（--resume_from_checkpoint none 可从头开始）", flush=True)
        planned = checkpoint_plan(resume.checkpoint)
        if planned not in (None, steps):
            print(f"[续训] 计划步数从 {planned} 改为 {steps}：学习率调度按 {steps} 步重新计算（与一开始就计划 {steps} 步"
                  f"时相同），从第 {checkpoint_step(resume.checkpoint) + 1} 步接着走。", flush=True)
    with stop.installed():  # on every rank: a launcher's SIGTERM reaches them all
        return trainer.train(resume_from_checkpoint=resume.checkpoint)


def final_eval(trainer) -> dict:
    """The evaluation at the last step: the Trainer already runs one there; only run it when it did not."""
    step = trainer.state.global_step
    done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == step]
    return dict(done[-1]) if done else trainer.evaluate()

