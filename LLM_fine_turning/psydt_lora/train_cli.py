"""Fine-tune Qwen3 with LoRA on PsyDTCorpus (multi-turn Chinese counselling dialogues).

    # the whole job: fetch Qwen/Qwen3-1.7B and PsyDTCorpus via ModelScope when missing, train, save
    python LLM_fine_turning/train_psydt_lora.py

    # look at the data first: tokenise, print statistics, write every sample, load no weights
    python LLM_fine_turning/train_psydt_lora.py --dry_run --dump_samples samples.jsonl

    # all 4,760 dialogues, no eval, no SwanLab
    python LLM_fine_turning/train_psydt_lora.py --max_train_items 0 --no-do_eval --report_to none

The adapter lands in <output_dir>/lora_adapter; talk to it with inference_psydt_lora.py.
Run again with the same command after an interruption and it resumes from the last checkpoint.
"""
import argparse
import contextlib
import os
import shutil
import sys
import warnings
from pathlib import Path

from psydt_lora.cli import make_parser
from psydt_lora.errors import PsyDTError, run_cli
from psydt_lora.hub import HUBS, TEST_FILE, TRAIN_FILE
from psydt_lora.prompt import DEFAULT_SYSTEM
from psydt_lora.data.samples import SAMPLE_MODES
from psydt_lora.train.lora import DEFAULT_TARGET_MODULES
from psydt_lora.train.ranks import is_main_process, world_size

warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices are not for our users


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("用 LoRA 在 PsyDTCorpus 上微调 Qwen3（默认 Qwen3-1.7B）。")
    g = p.add_argument_group("模型与数据")
    g.add_argument("--model_repo", default="Qwen/Qwen3-1.7B", help="模型在模型库（hub）上的 id")
    g.add_argument("--model_local_dir", "--model_path", dest="model_local_dir", default="./Qwen/Qwen3-1.7B",
                   help="本地模型文件夹；不完整时下载到这里（--model_path 是同一个参数，与推理脚本同名）")
    g.add_argument("--hub", choices=HUBS, default="modelscope", help="缺少模型或数据时从哪里下载")
    g.add_argument("--dataset_repo", default="YIRONGCHEN/PsyDTCorpus", help="数据集在模型库上的 id")
    g.add_argument("--dataset_dir", default="./data/PsyDTCorpus", help="PsyDTCorpus 文件所在的文件夹")
    g.add_argument("--train_file", action="append", default=None, metavar="PATH",
                   help="训练数据：文件或文件夹（JSON/JSONL/Parquet/CSV/Arrow、CPsyCounD 的 .txt），或 hub:数据集id；"
                        f"可以给多次或用逗号分隔，格式自动识别；默认 <dataset_dir>/{TRAIN_FILE}")
    g.add_argument("--dataset_spec", default=None, metavar="FILE",
                   help="数据集说明（JSON/YAML）：每个数据集的路径或 hub id、格式、列名与角色标签、系统提示词、条数上限、权重（见 README 的“数据”）")
    g.add_argument("--system_prompt", default=None,
                   help="给没有系统提示词的对话加上的系统提示词（语料自带的不变；默认是内置的那一个）；\"\" 表示不加")
    g.add_argument("--val_size", type=float, default=0,
                   help="从训练对话中按对话留出验证集（小于 1 是比例，≥ 1 是段数，按 --seed 确定）；训练时验证和批量测试都用它")
    g.add_argument("--eval_file", default=None, help=f"验证条目（单轮拆分格式）；默认 <dataset_dir>/{TEST_FILE}")
    g.add_argument("--max_train_items", type=int, default=300, help="每个数据集只用前 N 段对话；0 或 -1 = 全部")
    g.add_argument("--max_eval_items", type=int, default=20, help="从不同对话中均匀取 N 条验证条目；0 或 -1 = 全部")
    g.add_argument("--max_length", type=int, default=2048, help="每个样本的最大 token 数（超出时丢弃最早的几轮）")
    g.add_argument("--sample_mode", choices=SAMPLE_MODES, default="shared_prefix",
                   help="shared_prefix：与 per_turn 完全相同的损失，每段对话的历史只存一次；per_turn：每条回复一个样本；"
                        "dialogue：整段对话一个序列（目标不同）")
    g.add_argument("--pack_length", type=int, default=0,
                   help="shared_prefix：每个打包序列的最大 token 数，--packing 时也是每行的（默认 0 = 1.5 × max_length）；"
                        "任何回复看到的上下文都不超过 max_length")
    g.add_argument("--packing", action=argparse.BooleanOptionalAction, default=False,
                   help="把多个样本（shared_prefix 的 pack、per_turn 样本或整段对话）拼进同一行，直到 --pack_length；"
                        "样本之间互不可见，损失不变（同 LLaMA-Factory 的 neat_packing）。行数和步数随之减少。"
                        "在 CPU + sdpa 上实测更慢（稠密掩码随行长平方增长）；为 GPU + --attn_implementation flex_attention 准备")
    g.add_argument("--sample_cache", action=argparse.BooleanOptionalAction, default=True,
                   help="把构建好的训练样本缓存在数据旁的 .psydt_cache/ 里（那里不可写时放在用户缓存文件夹），"
                        "数据、分词器、模板和设置都不变时直接读取")
    g.add_argument("--sample_cache_dir", default=None, metavar="DIR", help="样本缓存放在这里（默认见上）")
    g.add_argument("--trust_remote_code", action="store_true", help="允许模型文件夹运行它自带的 Python 代码")

    g = p.add_argument_group("训练")
    g.add_argument("--output_dir", default="./output/qwen3-1_7b-psydt-lora", help="检查点、adapter、指标和图表的输出文件夹")
    g.add_argument("--per_device_train_batch_size", type=int, default=1, help="每块 GPU 每个微批次的样本数")
    g.add_argument("--per_device_eval_batch_size", type=int, default=1, help="验证时每块 GPU 每批的样本数")
    g.add_argument("--gradient_accumulation_steps", type=int, default=4, help="每次优化器更新累积的微批次数")
    g.add_argument("--num_train_epochs", type=float, default=2, help="训练样本过几遍")
    g.add_argument("--max_steps", type=int, default=-1, help="训练到这么多次优化器更新就停（-1：按轮数）")
    g.add_argument("--learning_rate", type=float, default=1e-4, help="峰值学习率")
    g.add_argument("--lr_scheduler_type", default="linear", help="学习率调度（linear、cosine 等 Trainer 支持的）")
    g.add_argument("--warmup_steps", type=float, default=0, help="预热：步数，小于 1 时表示占总步数的比例")
    g.add_argument("--save_steps", type=int, default=400, help="每 N 次优化器更新保存一个检查点")
    g.add_argument("--save_total_limit", type=int, default=None, help="最多保留 N 个检查点（默认全部保留）")
    g.add_argument("--logging_steps", type=int, default=10, help="每 N 次优化器更新记录一次损失")
    g.add_argument("--eval_steps", type=int, default=200, help="每 N 次优化器更新验证一次")
    g.add_argument("--do_eval", action=argparse.BooleanOptionalAction, default=True, help="在验证条目上计算损失")
    g.add_argument("--seed", type=int, default=42, help="随机种子（数据顺序、LoRA 初始化、dropout）")
    g.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="auto：CUDA 支持时用 bf16，否则 fp32")
    g.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="重算激活值以节省显存")
    g.add_argument("--attn_implementation", choices=("sdpa", "flex_attention", "eager"), default="sdpa",
                   help="注意力实现；flex_attention（只在 CUDA 上）按 shared_prefix 打包的树形掩码跳过看不到的块")
    g.add_argument("--group_by_length", action="store_true", help="把长度相近的样本放进同一批（减少 padding）")
    g.add_argument("--deepspeed", default=None, metavar="CONFIG", help="Trainer 用的 DeepSpeed 配置（见 examples/deepspeed/）")
    g.add_argument("--load_in_4bit", action="store_true", help="QLoRA：以 4-bit NF4 加载基础模型（需要 CUDA + bitsandbytes）")
    g.add_argument("--resume_from_checkpoint", default="auto",
                   help="auto（output_dir 中最新的完整检查点）、none（从头开始）或检查点路径")

    g = p.add_argument_group("LoRA")
    g.add_argument("--lora_r", type=int, default=8, help="LoRA 秩")
    g.add_argument("--lora_alpha", type=int, default=32, help="LoRA alpha（缩放 = alpha / r）")
    g.add_argument("--lora_dropout", type=float, default=0.1, help="LoRA 输入上的 dropout")
    g.add_argument("--target_modules", default=",".join(DEFAULT_TARGET_MODULES), help="加 LoRA 的线性层，逗号分隔")

    g = p.add_argument_group("记录")
    g.add_argument("--report_to", default="swanlab", help="swanlab、none 或 Trainer 支持的其他记录器（逗号分隔）")
    g.add_argument("--swanlab_project", default="qwen3-psydt-lora", help="SwanLab 项目名")
    g.add_argument("--swanlab_run_name", default=None, help="SwanLab 实验名")
    g.add_argument("--swanlab_mode", choices=("auto", "cloud", "online", "local", "offline", "disabled"), default="auto",
                   help="auto：已登录（swanlab login）时上传到云端，否则本地记录")

    g = p.add_argument_group("检查数据")
    g.add_argument("--dry_run", action="store_true", help="只读取并切分数据、打印统计后退出，不加载权重")
    g.add_argument("--dump_samples", default=None, metavar="PATH", help="把每个训练样本写成 JSON Lines")
    return p


@contextlib.contextmanager
def main_process_first():
    """With several processes (torchrun, accelerate launch), let rank 0 download before the others look."""
    from psydt_lora.train.ranks import world_size

    if world_size() <= 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def check_args(args) -> None:
    positive = ("max_length", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "save_steps", "logging_steps", "eval_steps", "lora_r", "lora_alpha")
    for name in positive:
        if getattr(args, name) <= 0:
            raise PsyDTError(f"--{name} 必须是正数，收到 {getattr(args, name)}。")
    if args.num_train_epochs <= 0 and args.max_steps <= 0:
        raise PsyDTError("--num_train_epochs 必须大于 0（或给出 --max_steps）。")
    if not 0 <= args.lora_dropout < 1:
        raise PsyDTError(f"--lora_dropout 必须在 [0, 1) 之间，收到 {args.lora_dropout}。")
    if args.deepspeed and not Path(args.deepspeed).is_file():
        raise PsyDTError(f"--deepspeed {args.deepspeed} 不存在（示例配置在 examples/deepspeed/）。")
    if args.val_size < 0 or args.val_size >= 1 and args.val_size != int(args.val_size):
        raise PsyDTError(f"--val_size 必须是 0 到 1 之间的比例或正整数段数，收到 {args.val_size:g}。")
    if args.val_size and args.eval_file:
        raise PsyDTError("--val_size（从训练数据留出验证集）和 --eval_file 只能给一个。")
    if args.learning_rate <= 0:
        raise PsyDTError(f"--learning_rate 必须是正数，收到 {args.learning_rate}。")
    if args.attn_implementation == "flex_attention":
        import torch

        if not torch.cuda.is_available():  # PyTorch's flex_attention has no backward pass on the CPU
            raise PsyDTError("--attn_implementation flex_attention 只能在 CUDA GPU 上训练（PyTorch 的 flex_attention "
                             "在 CPU 上不支持反向传播）；CPU 上请用默认的 sdpa。")
    check_local(args)
    if args.load_in_4bit:  # before any download or tokenisation: QLoRA cannot run here at all
        from psydt_lora.train.lora import four_bit_config

        four_bit_config(None)


def check_local(args) -> None:
    """Every local argument, in a moment, before any download, tokenisation or weight load."""
    from psydt_lora.files import check_can_write, check_files_exist
    from psydt_lora.train.checkpoints import find_checkpoint

    from psydt_lora.data.datasets import check_local_entries, entries_from_args

    check_files_exist({"--eval_file": args.eval_file if args.do_eval else None, "--deepspeed": args.deepspeed,
                       "--dataset_spec": args.dataset_spec})
    check_local_entries(entries_from_args(args.train_file, args.dataset_spec, None))
    if not args.dry_run:
        check_can_write(args.output_dir, "--output_dir")
        if args.resume_from_checkpoint not in ("auto", "none"):
            find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if args.dump_samples:
        check_can_write(args.dump_samples, "--dump_samples")


def read_data(args):
    """(Mix, eval file or None): every training dataset read and mixed (fetching what is missing), and the
    eval file (PsyDTCorpus's test file when training on PsyDTCorpus; none for other corpora without --val_size)."""
    from psydt_lora.data.datasets import DatasetEntry, build_mix, entries_from_args
    from psydt_lora.hub import ensure_dataset_file, ensure_hub_dataset

    limit = args.max_train_items if args.max_train_items > 0 else None
    entries = entries_from_args(args.train_file, args.dataset_spec, limit)
    if not entries:
        path = ensure_dataset_file(args.dataset_repo, args.dataset_dir, TRAIN_FILE, args.hub)
        entries = [DatasetEntry("PsyDTCorpus", "--train_file", path=str(path), max_items=limit)]
    say = print if is_main_process() else (lambda *a: None)
    system = DEFAULT_SYSTEM if args.system_prompt is None else args.system_prompt or None
    mix = build_mix(entries, hub=args.hub, seed=args.seed, system_prompt=system,
                    val_size=args.val_size, fetch=ensure_hub_dataset, say=say)
    if not args.do_eval or args.val_size:
        return mix, None
    if args.eval_file:  # check_local made sure it is there
        return mix, Path(args.eval_file)
    if all(e.path and Path(e.path).name == TRAIN_FILE for e in entries):
        return mix, ensure_dataset_file(args.dataset_repo, args.dataset_dir, TEST_FILE, args.hub)
    say("[验证] 这些数据没有配套的验证文件：训练时不做验证。要验证请加 --val_size 0.05（留出 5% 的对话）或 --eval_file。")
    return mix, None


def preflight(output_dir: Path, need_bytes: int) -> None:
    """Fail before loading weights for reasons knowable now: unwritable or full output folder."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write_test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PsyDTError(f"输出目录 {output_dir} 不可写：{err.strerror}。请换一个 --output_dir。") from None
    free = shutil.disk_usage(output_dir).free
    if free < need_bytes:
        raise PsyDTError(
            f"输出目录 {output_dir} 所在磁盘只剩 {free / 2**20:.0f} MiB，估计需要 {need_bytes / 2**20:.0f} MiB"
            "（检查点 + adapter）。请清理磁盘、换 --output_dir 或设置 --save_total_limit。"
        )


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
    r = read_stats.as_dict()
    if r["dropped_trailing_user_turns"] or r["empty_replies_not_trained"] or r["think_blocks_removed"]:
        print(f"[{title}] 数据整理：去掉结尾的 user 消息 {r['dropped_trailing_user_turns']} 条，"
              f"空回复（不训练）{r['empty_replies_not_trained']} 条，去掉 think 块 {r['think_blocks_removed']} 处")
    for note in s.notes:
        print(f"[{title}] 注意：{note}")


def train_samples_for(args, tokenizer, mix):
    """(samples, sample stats) of the mixed training dialogues, through the sample cache when on (rank 0
    builds and stores; the other ranks then read it)."""
    from psydt_lora.data.samples import build_training_samples

    main_rank = is_main_process()

    def build():
        return build_training_samples(mix.train, tokenizer, args.max_length, args.sample_mode, progress=main_rank,
                                      pack_length=args.pack_length or None)

    if not args.sample_cache:
        return build()
    from psydt_lora.data.datasets import digest
    from psydt_lora.data.sample_cache import cache_root, load_or_build

    settings = {"max_length": args.max_length, "mode": args.sample_mode, "pack_length": args.pack_length,
                "enable_thinking": False}
    where = mix.rows[0]["location"]
    say = print if main_rank else (lambda *a: None)
    say(f"[样本] 样本缓存在 {cache_root(where, args.sample_cache_dir)}")
    with main_process_first():
        return load_or_build(where, tokenizer, settings, build, say=say, data_digest=digest(mix.train),
                             cache_dir=args.sample_cache_dir)


def eval_samples_for(args, tokenizer, eval_file, heldout=None):
    """(samples, stats dict) of --max_eval_items items spread over the dialogues of the eval file, or of the
    held-out dialogues (one item per reply, as in a test file)."""
    from psydt_lora.data.dialogues import ReadStats, check_format, read_dialogues, select_spread
    from psydt_lora.data.datasets import as_test_items
    from psydt_lora.data.samples import build_samples

    if heldout is not None:
        items, read = as_test_items(heldout), ReadStats()
    else:
        items, read = read_dialogues(eval_file)
        check_format(items, eval_file, expect_split=True, flag="--eval_file")
    items = select_spread(items, args.max_eval_items)
    read.records = len(items)
    samples, stats = build_samples(items, tokenizer, args.max_length, last_reply_only=True)
    if is_main_process():
        print_stats("验证", read, stats)
    return samples, {"file": str(eval_file) if heldout is None else "--val_size", **read.as_dict(), **stats.as_dict()}


def samples_for(args, tokenizer, mix, eval_file):
    """(train samples, eval samples, data stats) with the statistics printed."""
    train_samples, train_stats = train_samples_for(args, tokenizer, mix)
    train_read = mix.read_stats()
    if is_main_process():
        print_stats("训练", train_read, train_stats)
    locations = ", ".join(r["location"] for r in mix.rows)
    if not train_samples:
        raise PsyDTError(f"{locations} 没有生成任何训练样本：--max_length {args.max_length} 可能比系统提示词还短。")
    # (every value a dict: SwanLab's config reads them; no dialogue or prompt text here, it is uploaded)
    data_stats = {"train": {"file": locations, "duplicates_dropped": mix.duplicates, **train_read.as_dict(),
                            **train_stats.as_dict()}, "datasets": {row["name"]: row for row in mix.rows}}
    eval_samples = []
    if eval_file is not None or mix.heldout and args.do_eval:
        eval_samples, data_stats["eval"] = eval_samples_for(args, tokenizer, eval_file, mix.heldout or None)
    return train_samples, eval_samples, data_stats


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    from psydt_lora import hub
    from psydt_lora.models import load_tokenizer
    from psydt_lora.prompt import prompt_format
    from psydt_lora.data.samples import dump_samples

    # 1. fetch what is missing, data first: a bad data file stops before any model download
    # (under torchrun / accelerate: the main process first, the others then find it)
    model_dir = Path(args.model_local_dir)
    with main_process_first():
        mix, eval_file = read_data(args)
        if not (args.dry_run and hub.tokenizer_present(model_dir)):  # a dry run needs the tokenizer only
            hub.ensure_model(args.model_repo, model_dir, args.hub)

    # 2. build samples
    tokenizer = load_tokenizer(model_dir, args.trust_remote_code)
    train_samples, eval_samples, data_stats = samples_for(args, tokenizer, mix, eval_file)
    main_rank = is_main_process()
    if args.dump_samples and main_rank:
        dump_samples(train_samples, args.dump_samples)
        print(f"[样本] 已写出 {len(train_samples)} 个训练样本到 {args.dump_samples}")
    if args.dry_run:
        return 0

    # 3. model + LoRA + Trainer -- unless this output folder already holds the finished run
    from psydt_lora.train.checkpoints import checkpoint_step, find_checkpoint
    from psydt_lora.train.outputs import ADAPTER_DIR
    from psydt_lora.train.rows import datasets_for
    from psydt_lora.train.trainer import planned_steps
    from psydt_lora.train.training import train

    output_dir = Path(args.output_dir)
    train_set, eval_set = datasets_for(args, train_samples, eval_samples)
    steps = planned_steps(len(train_set), args.per_device_train_batch_size, args.gradient_accumulation_steps,
                            args.num_train_epochs, args.max_steps)
    resume = find_checkpoint(output_dir, args.resume_from_checkpoint)
    finished = resume is not None and checkpoint_step(resume) >= steps
    if finished and hub.safetensors_complete(output_dir / ADAPTER_DIR / "adapter_model.safetensors"):
        print(f"[已完成] {output_dir} 里的这次训练已经完成（{Path(resume).name}，计划 {steps} 步），"
              f"adapter 在 {output_dir / ADAPTER_DIR}，无需再训练。要从头重新训练请加 --resume_from_checkpoint none"
              "（或换一个 --output_dir）；要训练更久请增大 --max_steps / --num_train_epochs。", flush=True)
        return 0
    n_ckpt = steps // args.save_steps + 1 if args.save_total_limit is None else args.save_total_limit
    preflight(output_dir, need_bytes=(n_ckpt + 1) * 200 * 2**20)
    if mix.heldout and main_rank:  # the batch test reads it (infer --mode test finds it through the adapter)
        data_stats["heldout"] = {"file": write_heldout(output_dir, mix.heldout), "dialogues": len(mix.heldout)}
    return train(args, model_dir, tokenizer, mix.train, train_set, eval_set, data_stats,
                 prompt_format(tokenizer), resume=resume, steps=steps)


def write_heldout(output_dir: Path, heldout) -> str:
    from psydt_lora.data.datasets import HELDOUT_FILE, as_test_items, test_records
    from psydt_lora.files import atomic_write_json

    path = (output_dir / HELDOUT_FILE).resolve()
    atomic_write_json(path, test_records(as_test_items(heldout)))
    print(f"[验证] 留出的 {len(heldout)} 段对话（按回复拆成测试条目）写入 {path}，批量测试默认用它", flush=True)
    return str(path)


def cli() -> int:
    """The `psydt-train` console command and `python LLM_fine_turning/train_psydt_lora.py`."""
    code = run_cli(main)
    if world_size() > 1:
        leave_without_finalizing(code)
    return code


def leave_without_finalizing(code: int) -> None:
    """End a launcher's worker once everything is saved and the process group is left. gloo's worker
    threads may still drop the last reference to a tensor that has a Python object after the
    collective's waiter has returned; if that happens once interpreter shutdown has begun, CPython ends
    the thread as it asks for the GIL and C++ aborts it ("terminate called without an active
    exception", SIGABRT -- seen about 1 run in 6 under DeepSpeed ZeRO-3 on a loaded 2-core machine).
    So the exit handlers (SwanLab finishing its run, logging) run while the interpreter is whole, and
    the process then ends without the shutdown phase in which that race lives."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(cli())
