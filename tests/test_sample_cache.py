"""The sample cache: a rerun reads exactly what a build gives, and anything that decides the samples
invalidates it."""
import json
import shutil
from pathlib import Path

import pytest

import train_psydt_lora
from conftest import REAL_TOKENIZER, SHAPED_TRAIN, require
from psydt_lora.data.dialogues import read_dialogues
from psydt_lora.data.sample_cache import CachedSamples, cache_root, load_or_build
from psydt_lora.data.samples import build_training_samples
from psydt_lora.errors import run_cli


def dry_run(model_dir, train, dump, *extra, cache=None):
    """A dry run writes a sample cache only into a folder named with --sample_cache_dir: here `cache`, by default
    a folder beside the dump."""
    cache = ["--sample_cache_dir", str(cache or Path(dump).parent / "samples-cache")] if cache is not False else []
    return run_cli(train_psydt_lora.main, ["--model_local_dir", str(model_dir), "--train_file", str(train), "--no-do_eval",
                                           "--dry_run", "--dump_samples", str(dump), *cache, *extra])


@pytest.mark.parametrize("mode", ["shared_prefix", "per_turn"])
def test_a_rerun_reads_back_exactly_what_was_built(tmp_path, capsys, mode):
    train = tmp_path / "train.json"
    shutil.copy(require(SHAPED_TRAIN), train)
    require(REAL_TOKENIZER / "vocab.json")
    assert dry_run(REAL_TOKENIZER, train, tmp_path / "built.jsonl", "--sample_mode", mode) == 0
    first = capsys.readouterr().out
    assert dry_run(REAL_TOKENIZER, train, tmp_path / "cached.jsonl", "--sample_mode", mode) == 0
    second = capsys.readouterr().out
    assert "已缓存到" in first and "cache hit" in second and "cache hit" not in first
    assert (tmp_path / "built.jsonl").read_bytes() == (tmp_path / "cached.jsonl").read_bytes()
    stats = [line for line in first.splitlines() if line.startswith("[训练]")]
    assert stats and stats == [line for line in second.splitlines() if line.startswith("[训练]")]
    assert dry_run(REAL_TOKENIZER, train, tmp_path / "plain.jsonl", "--sample_mode", mode, "--no-sample_cache") == 0
    assert (tmp_path / "plain.jsonl").read_bytes() == (tmp_path / "built.jsonl").read_bytes()


def test_what_decides_the_samples_invalidates_the_cache(tiny_model_dir, data_files, tmp_path, capsys):
    train, _ = data_files
    dump = tmp_path / "d.jsonl"
    assert dry_run(tiny_model_dir, train, dump) == 0
    assert "cache hit" in (capsys.readouterr(), dry_run(tiny_model_dir, train, dump), capsys.readouterr().out)[2]
    for extra in (["--max_length", "150"], ["--sample_mode", "per_turn"], ["--pack_length", "200"], ["--max_train_items", "1"]):
        assert dry_run(tiny_model_dir, train, dump, *extra) == 0
        assert "cache hit" not in capsys.readouterr().out, extra
    records = json.loads(train.read_text("utf-8"))
    records[0]["messages"][2]["content"] += "。"
    train.write_text(json.dumps(records, ensure_ascii=False), "utf-8")  # the data changed
    assert dry_run(tiny_model_dir, train, dump) == 0
    assert "cache hit" not in capsys.readouterr().out
    other = tmp_path / "model"  # the same weights and vocabulary, another chat template
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "tokenizer_config.json").read_text("utf-8"))
    template = (other / "chat_template.jinja") if (other / "chat_template.jinja").is_file() else None
    if template is not None:
        template.write_text(template.read_text("utf-8").replace("<|im_start|>system", "<|im_start|>system "), "utf-8")
    else:
        config["chat_template"] = config["chat_template"].replace("<|im_start|>system", "<|im_start|>system ")
        (other / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    assert dry_run(other, train, dump) == 0
    assert "cache hit" not in capsys.readouterr().out


def through_cache(tokenizer_dir, train):
    """What a training run does with its samples (train_samples_for's cache step, the default location): the
    lines it says, and whether the second time was a cache hit."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    dialogues, _ = read_dialogues(train)
    said = []
    for _ in range(2):
        load_or_build(train, tokenizer, {"mode": "shared_prefix", "max_length": 200},
                      lambda: build_training_samples(dialogues, tokenizer, 200, "shared_prefix"), say=said.append)
    return said


def test_an_unusable_cache_folder_beside_the_data_moves_the_cache_to_the_user_folder(tiny_model_dir, data_files,
                                                                                      tmp_path, monkeypatch):
    train, _ = data_files
    monkeypatch.setenv("PSYDT_CACHE_DIR", str(tmp_path / "user-cache"))
    assert cache_root(train) == train.parent / ".psydt_cache"  # usable: beside the data
    (train.parent / ".psydt_cache").write_text("not a folder")  # as unusable as a read-only one, for root too
    assert cache_root(train) == tmp_path / "user-cache" / "samples"
    first, second = through_cache(tiny_model_dir, train)
    assert f"已缓存到 {tmp_path / 'user-cache' / 'samples'}" in first and "cache hit" in second


def test_a_read_only_data_folder_gets_nothing_written_into_it(tiny_model_dir, data_files, tmp_path, capsys,
                                                               monkeypatch):
    train, _ = data_files
    monkeypatch.setenv("PSYDT_CACHE_DIR", str(tmp_path / "user-cache"))
    folder = tmp_path / "shared"
    folder.mkdir()
    shutil.copy(train, folder / "train.json")
    folder.chmod(0o555)  # a shared mount or a package's data (root ignores the bits: the code must not)
    try:
        assert cache_root(folder / "train.json") == tmp_path / "user-cache" / "samples"
        through_cache(tiny_model_dir, folder / "train.json")
        assert sorted(p.name for p in folder.iterdir()) == ["train.json"]
    finally:
        folder.chmod(0o755)
    assert any((tmp_path / "user-cache" / "samples").iterdir())
    chosen = tmp_path / "chosen"  # and the user's choice wins, a dry run's too
    assert dry_run(tiny_model_dir, train, tmp_path / "d.jsonl", cache=chosen) == 0
    assert f"样本缓存在 {chosen}" in capsys.readouterr().out and any(chosen.iterdir())
    assert not (train.parent / ".psydt_cache").exists()


@pytest.mark.parametrize("mode", ["shared_prefix", "per_turn"])
def test_sample_lengths_without_reading_tokens_are_the_lengths(real_tokenizer, tmp_path, mode):
    """--packing sizes its rows from `lengths()`: for built samples, a per_turn view and the cache
    (read from the Arrow columns) it gives each sample's real length."""
    train = tmp_path / "train.json"
    shutil.copy(require(SHAPED_TRAIN), train)
    dialogues, _ = read_dialogues(train, limit=6)
    build = lambda: build_training_samples(dialogues, real_tokenizer, 700, mode)  # noqa: E731
    settings = {"mode": mode, "max_length": 700}
    built, _ = load_or_build(train, real_tokenizer, settings, build, say=lambda *a: None)
    cached, _ = load_or_build(train, real_tokenizer, settings, build, say=lambda *a: None)
    assert isinstance(cached.trees if mode == "per_turn" else cached, CachedSamples)  # the second came from the cache
    truth = [len(s.input_ids) for s in built]
    assert len(set(truth)) > 5
    assert built.lengths() == truth == cached.lengths() == [len(s.input_ids) for s in cached]
