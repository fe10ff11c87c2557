"""The data of a training run: every dataset read and mixed (fetching what is missing), the eval items, the
samples built (through the sample cache), the statistics printed, and the held-out dialogues written."""
from pathlib import Path

from psydt_lora.data.datasets import (HELDOUT_FILE, DatasetEntry, as_turn_items, build_mix, digest, entries_from_args,
                                      split_records)
from psydt_lora.data.dialogues import ReadStats, check_format, read_dialogues, select_spread, tidy_summary
from psydt_lora.data.pairs import build_pair_mix, pair_entries
from psydt_lora.data.preference_samples import build_preference_samples
from psydt_lora.data.sample_cache import cache_root, load_or_build
from psydt_lora.data.samples import SampleSettings, build_samples, build_with_settings
from psydt_lora.errors import PsyDTError
from psydt_lora.files import atomic_write_json
from psydt_lora.hub import TEST_FILE, TRAIN_FILE, ensure_dataset_file, ensure_hub_dataset
from psydt_lora.prompt import DEFAULT_SYSTEM
from psydt_lora.train.config import DataConfig
from psydt_lora.train.ranks import is_main_process, main_process_first


def say(*parts) -> None:
    if is_main_process():
        print(*parts, flush=True)


def read_data(data: DataConfig, hub: str):
    """(Mix, eval file or None): every training dataset read and mixed (fetching what is missing), and the
    eval file (PsyDTCorpus's test file when training on PsyDTCorpus; none for other corpora without --val_size)."""
    limit = data.max_train_items if data.max_train_items > 0 else None
    entries = entries_from_args(list(data.train_files) or None, data.dataset_spec, limit)
    if not entries:
        path = ensure_dataset_file(data.dataset_repo, data.dataset_dir, TRAIN_FILE, hub)
        entries = [DatasetEntry("PsyDTCorpus", "--train_file", path=str(path), max_items=limit)]
    system = system_prompt_of(data)
    mix = build_mix(entries, hub=hub, seed=data.seed, system_prompt=system, val_size=data.val_size,
                    fetch=ensure_hub_dataset, say=say)
    if not data.do_eval or data.val_size:
        return mix, None
    if data.eval_file:  # the CLI made sure it is there
        return mix, Path(data.eval_file)
    if all(e.path and Path(e.path).name == TRAIN_FILE for e in entries):
        return mix, ensure_dataset_file(data.dataset_repo, data.dataset_dir, TEST_FILE, hub)
    say("[验证] 这些数据没有配套的验证文件：训练时不做验证。要验证请加 --val_size 0.05（留出 5% 的对话）或 --eval_file。")
    return mix, None


def print_stats(title, read_stats, sample_stats) -> None:
    s = sample_stats
    print(f"[{title}] 对话 {s.dialogues}，样本 {s.samples}，token {s.tokens:,}，其中监督 token {s.supervised_tokens:,}"
          f"（{100 * s.supervised_tokens / max(s.tokens, 1):.1f}%），最长样本 {s.max_sample_tokens}，平均 {s.as_dict()['mean_sample_tokens']}")
    if s.per_turn_tokens:
        print(f"[{title}] shared_prefix 打包：{s.per_turn_samples} 个逐轮样本 → {s.samples} 个打包序列，"
              f"token {s.per_turn_tokens:,} → {s.tokens:,}（{s.per_turn_tokens / max(s.tokens, 1):.1f} 倍更少），损失完全相同")
    if s.truncated_history_samples or s.truncated_reply_samples or s.dropped_too_long_samples:
        print(f"[{title}] 超长截断：{s.truncated_history_samples} 个样本丢弃了最早的 {s.dropped_rounds} 轮历史，"
              f"{s.truncated_reply_samples} 个样本截断了回复结尾，{s.dropped_too_long_samples} 个样本因上下文本身超长被丢弃")
    tidy = tidy_summary(read_stats.as_dict())
    if tidy:
        print(f"[{title}] 数据整理：{tidy}")
    for note in s.notes:
        print(f"[{title}] 注意：{note}")


def train_samples_for(data: DataConfig, settings: SampleSettings, tokenizer, mix):
    """(samples, sample stats) of the mixed training dialogues, through the sample cache when on (rank 0
    builds and stores; the other ranks then read it). One SampleSettings feeds the builder and the fingerprint."""
    main_rank = is_main_process()

    def build():
        return build_with_settings(mix.train, tokenizer, settings, progress=main_rank)

    if not data.sample_cache:
        return build()
    where = mix.rows[0]["location"]
    say(f"[样本] 样本缓存在 {cache_root(where, data.sample_cache_dir)}")
    with main_process_first():
        return load_or_build(where, tokenizer, settings.fingerprint(), build, say=say, data_digest=digest(mix.train),
                             cache_dir=data.sample_cache_dir)


def eval_samples_for(data: DataConfig, settings: SampleSettings, tokenizer, eval_file, heldout=None):
    """(samples, stats dict) of --max_eval_items items spread over the dialogues of the eval file, or of the
    held-out dialogues (one item per reply, as in a test file)."""
    if heldout is not None:
        items, read = as_turn_items(heldout), ReadStats()
    else:
        items, read = read_dialogues(eval_file)
        check_format(items, eval_file, expect_split=True, flag="--eval_file")
    items = select_spread(items, data.max_eval_items)
    read.records = len(items)
    samples, stats = build_samples(items, tokenizer, settings.max_length, last_reply_only=True)
    if is_main_process():
        print_stats("验证", read, stats)
    return samples, {"file": str(eval_file) if heldout is None else "--val_size", **read.as_dict(), **stats.as_dict()}


def samples_for(data: DataConfig, settings: SampleSettings, tokenizer, mix, eval_file):
    """(train samples, eval samples, data stats) with the statistics printed."""
    train_samples, train_stats = train_samples_for(data, settings, tokenizer, mix)
    train_read = mix.read_stats()
    if is_main_process():
        print_stats("训练", train_read, train_stats)
    locations = ", ".join(r["location"] for r in mix.rows)
    if not train_samples:
        raise PsyDTError(f"{locations} 没有生成任何训练样本：--max_length {settings.max_length} 可能比系统提示词还短。")
    # (every value a dict: SwanLab's config reads them; no dialogue or prompt text here, it is uploaded)
    data_stats = {"train": {"file": locations, "duplicates_dropped": mix.duplicates, **train_read.as_dict(),
                            **train_stats.as_dict()}, "datasets": {row["name"]: row for row in mix.rows}}
    eval_samples = []
    if eval_file is not None or mix.heldout and data.do_eval:
        eval_samples, data_stats["eval"] = eval_samples_for(data, settings, tokenizer, eval_file, mix.heldout or None)
    return train_samples, eval_samples, data_stats


def write_heldout(output_dir: Path, heldout) -> str:
    """The held-out dialogues as test items beside the run's outputs (the batch test's default test file)."""
    path = (Path(output_dir) / HELDOUT_FILE).resolve()
    atomic_write_json(path, split_records(as_turn_items(heldout)))
    say(f"[验证] 留出的 {len(heldout)} 段对话（按回复拆成测试条目）写入 {path}，批量测试默认用它")
    return str(path)


def read_pairs(data: DataConfig, hub: str):
    """Every pair file read, checked and mixed as SFT mixes dialogues (held out BY PROMPT with --val_size): a
    bad pair stops here, before the model is fetched or anything is written."""
    limit = data.max_train_items if data.max_train_items > 0 else None
    entries = pair_entries(list(data.train_files) or None, data.dataset_spec, limit)
    return build_pair_mix(entries, hub=hub, seed=data.seed, system_prompt=system_prompt_of(data), val_size=data.val_size,
                          fetch=ensure_hub_dataset, say=say)


def system_prompt_of(data: DataConfig) -> str | None:
    return DEFAULT_SYSTEM if data.system_prompt is None else data.system_prompt or None


def preference_samples(mix, data: DataConfig, settings: SampleSettings, tokenizer):
    """(train trees, held-out trees, data stats, the reference cache folder): each prompt's replies one tree.
    The mix already gave each context its dataset's system prompt (or none, where a spec says "")."""
    train, train_stats = build_preference_samples(mix.train, tokenizer, settings.max_length, system_prompt=None)
    if not len(train):
        raise PsyDTError(f"{', '.join(r['location'] for r in mix.rows)} 没有生成任何偏好训练样本：--max_length "
                         f"{settings.max_length} 可能比提示词还短。")
    stats = {"train": {"file": ", ".join(r["location"] for r in mix.rows), "duplicates_dropped": mix.duplicates,
                       **train_stats.as_dict()}, "datasets": {row["name"]: row for row in mix.rows}}
    say(preference_line("训练", train_stats))
    heldout = []
    if mix.heldout and data.do_eval:
        heldout, held_stats = build_preference_samples(mix.heldout, tokenizer, settings.max_length, system_prompt=None)
        stats["eval"] = {"file": "--val_size", **held_stats.as_dict()}
        say(preference_line("验证", held_stats))
    elif data.do_eval:
        say("[验证] 偏好训练的验证集按提示词从偏好数据里留出：没有 --val_size，这次不做验证（例如 --val_size 0.05）。")
    return train, heldout, stats, cache_root(mix.rows[0]["location"], data.sample_cache_dir)


def preference_line(title: str, s) -> str:
    saved = s.two_row_tokens / max(s.tokens, 1)
    return (f"[{title}] 偏好对 {s.pairs}，提示词 {s.prompts}（每个提示词一棵树，{s.leaves} 条回复），token {s.tokens:,}"
            f"（每对 {s.tokens / max(s.pairs, 1):.0f}；两行布局每对 {s.two_row_tokens / max(s.pairs, 1):.0f}，多 {saved:.1f} 倍），"
            f"其中监督 token {s.supervised_tokens:,}"
            + (f"；{s.truncated_history_prompts} 个提示词丢弃了最早的 {s.dropped_rounds} 轮历史" if s.truncated_history_prompts else "")
            + (f"；{s.dropped_too_long_pairs} 对因超长被丢弃" if s.dropped_too_long_pairs else ""))
