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
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from psydt_lora import hub
from psydt_lora.cli import make_parser
from psydt_lora.data.datasets import check_local_entries, entries_from_args, system_prompts
from psydt_lora.data.pairs import pair_entries
from psydt_lora.data.samples import SAMPLE_MODES, SampleSettings, dump_samples
from psydt_lora.errors import PsyDTError, run_cli
from psydt_lora.files import check_can_write, check_files_exist
from psydt_lora.hub import HUBS, TEST_FILE, TRAIN_FILE
from psydt_lora.models import check_adapter_dir, load_tokenizer
from psydt_lora.prompt import prompt_format
from psydt_lora.run_record import RunRecord
from psydt_lora.train.checkpoints import check_output_stage, find_checkpoint, mark_stage, plan_resume
from psydt_lora.train.config import (DEFAULT_TARGET_MODULES, PREFERENCE_LEARNING_RATE, SFT_LEARNING_RATE, STAGES,
                                     DataConfig, LoraSettings, ModelConfig, TrackingConfig, TrainConfig, TrainerConfig)
from psydt_lora.train.job import TrainingRun, train
from psydt_lora.train.lora import continued_lora, four_bit_config
from psydt_lora.train.outputs import ADAPTER_DIR, most_common_system_prompt, preflight
from psydt_lora.train.preference import LOSSES, REFERENCE_FREE, PreferenceConfig
from psydt_lora.train.ranks import is_main_process, main_process_first, world_size
from psydt_lora.train.sample_dataset import datasets_for, pack_capacity
from psydt_lora.train.signals import EXIT_CODES, console_outlives_its_pipe, tell
from psydt_lora.train.trainer import planned_steps
from psydt_lora.train.training_data import preference_samples, read_data, read_pairs, samples_for, write_heldout

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
    g.add_argument("--learning_rate", type=float, default=None,
                   help=f"峰值学习率（默认：sft {SFT_LEARNING_RATE:g}，dpo {PREFERENCE_LEARNING_RATE:g}，同 LLaMA-Factory 的 DPO 示例）")
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

    g = p.add_argument_group("偏好训练（--stage dpo）")
    g.add_argument("--stage", choices=STAGES, default="sft",
                   help="sft：监督微调（默认）；dpo：在偏好数据（--train_file 给出选中/拒绝回复对）上做偏好优化，损失见 --pref_loss")
    g.add_argument("--pref_loss", choices=LOSSES, default="sigmoid",
                   help="sigmoid（DPO）、ipo、orpo、simpo（与 LLaMA-Factory 同名）；orpo 和 simpo 不需要参考模型")
    g.add_argument("--pref_beta", type=float, default=0.1, help="偏好损失的 beta（DPO 的温度；ORPO 中是比值项的权重）")
    g.add_argument("--pref_ftx", type=float, default=0.0, help="再加上选中回复的 SFT 损失，乘以这个系数（0 = 不加）")
    g.add_argument("--simpo_gamma", type=float, default=0.5, help="SimPO 的目标间隔 gamma")
    g.add_argument("--adapter_path", default=None, metavar="DIR",
                   help="从这个 SFT adapter 继续训练（与推理脚本同名）；这时参考模型默认就是这个 SFT 模型，而不是基础模型")
    g.add_argument("--pref_reference", choices=("auto", "base", "adapter"), default="auto",
                   help="参考模型：auto（有 --adapter_path 时是那个 SFT 模型，否则是基础模型）、base（关掉 adapter 的基础模型）、"
                        "adapter（--adapter_path 的 SFT 模型）；参考 log-prob 在训练前只算一次并缓存")

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
    g.add_argument("--dry_run", action="store_true", help="只读取并切分数据、打印统计后退出，不加载权重，不在数据旁写任何文件（样本缓存只写进明确给出的 --sample_cache_dir）")
    g.add_argument("--dump_samples", default=None, metavar="PATH", help="把每个训练样本写成 JSON Lines")
    return p


def config_from_args(args) -> TrainConfig:
    """The typed settings of a run: the only place the command line's names meet the settings' names."""
    return TrainConfig(
        model=ModelConfig(repo=args.model_repo, local_dir=args.model_local_dir, adapter_path=args.adapter_path,
                          hub=args.hub, dtype=args.dtype,
                          attn_implementation=args.attn_implementation, load_in_4bit=args.load_in_4bit,
                          gradient_checkpointing=args.gradient_checkpointing, trust_remote_code=args.trust_remote_code),
        data=DataConfig(dataset_repo=args.dataset_repo, dataset_dir=args.dataset_dir,
                        train_files=tuple(args.train_file or ()), dataset_spec=args.dataset_spec,
                        system_prompt=system_prompt(args), val_size=args.val_size, eval_file=args.eval_file,
                        max_train_items=args.max_train_items, max_eval_items=args.max_eval_items, do_eval=args.do_eval,
                        sample_cache=args.sample_cache and (not args.dry_run or args.sample_cache_dir is not None),
                        # a dry run writes no cache beside the data; into a folder the user names, it does
                        sample_cache_dir=args.sample_cache_dir, seed=args.seed),
        samples=SampleSettings(max_length=args.max_length, mode=args.sample_mode, pack_length=args.pack_length),
        lora=continued_lora(args.adapter_path) if args.adapter_path else LoraSettings(
            r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
            target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip())),
        trainer=TrainerConfig(**{f.name: getattr(args, f.name) for f in fields(TrainerConfig) if f.name != "learning_rate"},
                              learning_rate=learning_rate(args)),
        tracking=TrackingConfig(report_to=tuple(r.strip() for r in args.report_to.split(",") if r.strip()),
                                swanlab_project=args.swanlab_project, swanlab_run_name=args.swanlab_run_name,
                                swanlab_mode=args.swanlab_mode),
        preference=preference_from_args(args),
    )


def system_prompt(args) -> str | None:
    """--system_prompt; a preference run continuing an SFT adapter defaults to the prompt that adapter learned
    (its contexts are the same conversations; pair files from the judge carry no system message)."""
    if args.system_prompt is not None or not args.adapter_path:
        return args.system_prompt
    record = RunRecord.read(args.adapter_path)
    return record.system_prompt if record and record.system_prompt else None


def learning_rate(args) -> float:
    if args.learning_rate is not None:
        return args.learning_rate
    return SFT_LEARNING_RATE if args.stage == "sft" else PREFERENCE_LEARNING_RATE


def preference_from_args(args) -> PreferenceConfig | None:
    if args.stage == "sft":
        return None
    reference = args.pref_reference
    if reference == "auto":
        reference = "adapter" if args.adapter_path else "base"
    if args.pref_loss in REFERENCE_FREE:
        reference = "none"
    return PreferenceConfig(loss=args.pref_loss, beta=args.pref_beta, ftx=args.pref_ftx, simpo_gamma=args.simpo_gamma,
                            reference=reference)


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
    if args.learning_rate is not None and args.learning_rate <= 0:
        raise PsyDTError(f"--learning_rate 必须是正数，收到 {args.learning_rate}。")
    check_stage(args)
    if args.attn_implementation == "flex_attention":
        import torch

        if not torch.cuda.is_available():  # PyTorch's flex_attention has no backward pass on the CPU
            raise PsyDTError("--attn_implementation flex_attention 只能在 CUDA GPU 上训练（PyTorch 的 flex_attention "
                             "在 CPU 上不支持反向传播）；CPU 上请用默认的 sdpa。")
    check_local(args)
    if args.load_in_4bit:  # before any download or tokenisation: QLoRA cannot run here at all
        four_bit_config(None)


def check_stage(args) -> None:
    """The preference flags, before anything is read: each one only where it means something."""
    if args.stage == "sft":
        defaults = {"adapter_path": None, "pref_reference": "auto", "pref_loss": "sigmoid", "pref_beta": 0.1,
                    "pref_ftx": 0.0, "simpo_gamma": 0.5}
        given = [f for f, default in defaults.items() if getattr(args, f) != default]
        if given:
            raise PsyDTError(f"--{given[0]} 只用于偏好训练（--stage dpo）；SFT 请去掉它，或加 --stage dpo。")
        return
    if args.eval_file:
        raise PsyDTError("偏好训练的验证集来自偏好数据本身：用 --val_size 按提示词留出，不用 --eval_file。")
    if args.attn_implementation == "flex_attention":
        raise PsyDTError("--stage dpo 还不支持 --attn_implementation flex_attention；请用默认的 sdpa。")
    if args.adapter_path:
        check_continued_lora(args)
    if not args.train_file and not args.dataset_spec:
        raise PsyDTError("--stage dpo 需要偏好数据：--train_file 偏好对文件（TRL、LLaMA-Factory、ms-swift 的格式，见 README 的“偏好数据格式”），"
                         "或 --dataset_spec。psydt-judge pairs 可以从评审结果生成这样的文件。")
    if args.pref_reference == "adapter" and not args.adapter_path:
        raise PsyDTError("--pref_reference adapter 需要 --adapter_path（作为参考模型的 SFT adapter）。")
    if args.adapter_path:
        check_adapter_dir(args.adapter_path)
    if args.sample_mode != "shared_prefix" or args.packing:
        raise PsyDTError("--stage dpo 总是把同一提示词的回复放进一棵树（shared_prefix）；不支持 --sample_mode / --packing。")
    PreferenceConfig(loss=args.pref_loss, beta=args.pref_beta, ftx=args.pref_ftx, simpo_gamma=args.simpo_gamma)


def check_continued_lora(args) -> None:
    """Continuing an adapter keeps its own rank, alpha and target modules: a LoRA flag given with it would be ignored."""
    lora_flags = {"lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": ",".join(DEFAULT_TARGET_MODULES)}
    given = [f for f, default in lora_flags.items() if getattr(args, f) != default]
    if given:
        raise PsyDTError(f"--adapter_path 继续训练时沿用这个 adapter 自己的 LoRA 设置（见它的 adapter_config.json）；"
                         f"--{given[0]} 不会起作用，请去掉它。")


def check_local(args) -> None:
    """Every local argument, in a moment, before any download, tokenisation or weight load."""
    check_files_exist({"--eval_file": args.eval_file if args.do_eval else None, "--deepspeed": args.deepspeed,
                       "--dataset_spec": args.dataset_spec})
    if args.stage == "sft":
        check_local_entries(entries_from_args(args.train_file, args.dataset_spec, None))
    else:
        pair_entries(args.train_file, args.dataset_spec, None)  # the same checks, for pair files
    if not args.dry_run:
        check_can_write(args.output_dir, "--output_dir")
        check_output_stage(args.output_dir, args.stage)
        if args.resume_from_checkpoint not in ("auto", "none"):
            find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if args.dump_samples:
        check_can_write(args.dump_samples, "--dump_samples")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    config = config_from_args(args)
    # 1. fetch what is missing, data first: a bad data file stops before any model download
    # (under torchrun / accelerate: the main process first, the others then find it)
    model_dir = Path(config.model.local_dir)
    with main_process_first():
        if config.stage == "sft":
            mix, eval_file = read_data(config.data, config.model.hub)
        else:
            mix, eval_file = read_pairs(config.data, config.model.hub), None
        if not (args.dry_run and hub.tokenizer_present(model_dir)):  # a dry run needs the tokenizer only
            hub.ensure_model(config.model.repo, model_dir, config.model.hub)

    # 2. build samples (a preference run reads its pair files here: they need the tokenizer)
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    if config.stage == "sft":
        train_samples, eval_samples, data_stats = samples_for(config.data, config.samples, tokenizer, mix, eval_file)
        cache_dir = None
    else:
        train_samples, eval_samples, data_stats, cache_dir = preference_samples(mix, config.data, config.samples,
                                                                                tokenizer)
    if args.dump_samples and is_main_process():
        dump_samples(train_samples, args.dump_samples)
        print(f"[样本] 已写出 {len(train_samples)} 个训练样本到 {args.dump_samples}")
    if args.dry_run:
        return 0

    # 3. model + LoRA + Trainer -- unless this output folder already holds the finished run
    output_dir = config.trainer.output_path
    if config.stage == "sft":
        train_set, eval_set = datasets_for(config.trainer.packing, pack_capacity(config.samples), train_samples,
                                           eval_samples)
    else:  # the reference log-probs join them once the model is loaded
        train_set, eval_set = train_samples, (eval_samples or None)
    t = config.trainer
    steps = planned_steps(len(train_set), t.per_device_train_batch_size, t.gradient_accumulation_steps,
                          t.num_train_epochs, t.max_steps)
    resume = plan_resume(output_dir, t.resume_from_checkpoint, steps)
    if resume.done:
        print(f"[已完成] {output_dir} 里的这次训练已经完成（{Path(resume.checkpoint).name}，计划 {steps} 步），"
              f"adapter 在 {output_dir / ADAPTER_DIR}，无需再训练。要从头重新训练请加 --resume_from_checkpoint none"
              "（或换一个 --output_dir）；要训练更久请增大 --max_steps / --num_train_epochs。", flush=True)
        return 0
    n_ckpt = steps // t.save_steps + 1 if t.save_total_limit is None else t.save_total_limit
    preflight(output_dir, need_bytes=(n_ckpt + 1) * 200 * 2**20)
    if is_main_process():
        mark_stage(output_dir, config.stage)
    if config.stage == "sft" and mix.heldout and is_main_process():  # the batch test finds it through the adapter
        data_stats["heldout"] = {"file": write_heldout(output_dir, mix.heldout), "dialogues": len(mix.heldout)}
    job = TrainingRun(config, model_dir, tokenizer, data_stats, prompt_format(tokenizer),
                      most_common_system_prompt(mix.train),
                      system_prompts(mix.train) if config.stage == "sft" else {}, cache_dir)
    return train(job, train_set, eval_set, resume=resume, steps=steps)


def cli() -> int:
    """The `psydt-train` console command and `python LLM_fine_turning/train_psydt_lora.py`. Its output survives
    a reader that went away (Ctrl-C under `| tee log` ends tee too): the run still saves and exits 130."""
    with console_outlives_its_pipe():
        try:
            code = run_cli(main)
        except KeyboardInterrupt:  # before training (a download, the samples) or a second Ctrl-C during it
            tell("\n[中断] 收到 Ctrl-C，已退出。已保存的检查点都还在：用同样的命令重新运行即可从最后一个检查点继续。")
            code = EXIT_CODES["SIGINT"]
        if world_size() > 1:
            leave_without_finalizing(code)
        sys.stdout.flush()  # inside: a pipe found gone now still goes quietly to /dev/null
        sys.stderr.flush()
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
