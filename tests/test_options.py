"""Options that had no test of their own: parallel rendering, --group_by_length, inference with thinking on."""
import json
import multiprocessing

import inference_psydt_lora
import train_psydt_lora
from conftest import DIALOGUES
from psydt_lora import prompt
from psydt_lora.data.dialogues import Dialogue


def test_parallel_rendering_equals_one_by_one(tiny_tokenizer, monkeypatch):
    convos = [d["messages"][:k] for d in DIALOGUES for k in (2, 4)] * 3
    one_by_one = [prompt.render(tiny_tokenizer, c, True) for c in convos]
    monkeypatch.setattr(prompt, "PARALLEL_FROM", 2)  # worker processes from 2 conversations on
    calls = []
    real_pool = multiprocessing.get_context("fork").Pool

    class CountingPool:
        def __init__(self, n):
            calls.append(n)
            self.pool = real_pool(n)

        def __enter__(self):
            return self.pool.__enter__()

        def __exit__(self, *exc):
            return self.pool.__exit__(*exc)

    class Fork:
        Pool = CountingPool

    monkeypatch.setattr(multiprocessing, "get_context", lambda name: Fork)
    assert prompt.render_many(tiny_tokenizer, convos, True) == one_by_one
    assert calls  # the parallel path really ran


def test_group_by_length_trains(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "train.json"
    data.write_text(json.dumps(DIALOGUES * 3, ensure_ascii=False), "utf-8")
    argv = ["--model_local_dir", str(tiny_model_dir), "--train_file", str(data), "--no-do_eval", "--output_dir",
            str(tmp_path / "out"), "--report_to", "none", "--max_steps", "3", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--sample_mode", "per_turn", "--group_by_length"]
    assert train_psydt_lora.main(argv) == 0
    said = capsys.readouterr().out
    assert "padding 占比" in said and "--group_by_length 可以减少" not in said  # the hint is for runs without it
    assert (tmp_path / "out" / "lora_adapter" / "adapter_model.safetensors").is_file()


def test_inference_with_thinking_on_renders_without_the_empty_think_block(tiny_model_dir, memorised_adapter, data_files,
                                                                           tmp_path, capsys):
    item = Dialogue(0, "x", None, DIALOGUES[0]["messages"][:2])
    off = prompt.render_prompt(prompt_tokenizer(memorised_adapter), item.messages, enable_thinking=False)
    on = prompt.render_prompt(prompt_tokenizer(memorised_adapter), item.messages, enable_thinking=True)
    assert off.endswith("<think>\n\n</think>\n\n") and not on.endswith("</think>\n\n")
    _, test = data_files
    out = tmp_path / "r.json"
    assert inference_psydt_lora.main(["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter),
                                      "--mode", "test", "--test_file", str(test), "--test_output_file", str(out),
                                      "--no-do_sample", "--max_new_tokens", "30", "--enable_thinking"]) == 0
    said = capsys.readouterr().out
    assert "训练时 enable_thinking=False，现在是 True" in said and "思考模式 开" in said
    results = json.loads(out.read_text("utf-8"))
    assert results["meta"]["generation"]["enable_thinking"] is True
    assert all("<think>" not in r["response"] for r in results["results"])


def prompt_tokenizer(folder):
    from psydt_lora.models import load_tokenizer

    return load_tokenizer(folder)


def test_trainer_settings_pass_through_by_name():
    """A trainer setting named like a TrainingArguments field reaches it without a hand-written copy; the ones
    the run decides itself are listed, and the flags reach the settings through the one CLI mapping."""
    from dataclasses import fields

    import torch
    from transformers import TrainingArguments

    from psydt_lora.train import trainer as T
    from psydt_lora.train.config import TrainerConfig
    from psydt_lora.train_cli import build_parser, config_from_args

    args = build_parser().parse_args(["--learning_rate", "3e-5", "--warmup_steps", "7", "--save_total_limit", "2",
                                      "--lr_scheduler_type", "cosine", "--seed", "5"])
    config = config_from_args(args).trainer
    names = {f.name for f in fields(TrainingArguments)}
    through = T.passed_through(config)
    assert set(through) == ({f.name for f in fields(TrainerConfig)} & names) - set(T.OWN_HANDLING)
    # exactly these today: a transformers release that adds a field named like one of our own settings shows up here
    assert through == ["deepspeed", "gradient_accumulation_steps", "learning_rate", "logging_steps", "lr_scheduler_type",
                       "max_steps", "num_train_epochs", "per_device_eval_batch_size", "per_device_train_batch_size",
                       "save_steps", "save_total_limit", "seed", "warmup_steps"]
    ta = T.training_arguments(config, [], torch.float32, "cpu", do_eval=False)
    assert (ta.learning_rate, ta.warmup_steps, ta.save_total_limit, ta.seed) == (3e-5, 7, 2, 5)
    assert ta.lr_scheduler_type.value == "cosine" and ta.eval_strategy.value == "no"
