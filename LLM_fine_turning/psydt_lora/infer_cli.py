"""Talk to Qwen3 + the PsyDTCorpus LoRA adapter, or test it on the PsyDTCorpus test split.

    # chat in the terminal (streaming; /help lists the commands)
    python LLM_fine_turning/inference_psydt_lora.py

    # batch test on 50 items spread over the test dialogues, greedy, 8 at a time
    python LLM_fine_turning/inference_psydt_lora.py --mode test --max_test_items 50 --no-do_sample --batch_size 8

    # your own questions, each as a fresh conversation
    python LLM_fine_turning/inference_psydt_lora.py --mode test --questions_file questions.txt

    # merge the adapter into the base model and save a standalone model
    python LLM_fine_turning/inference_psydt_lora.py --save_merged ./output/qwen3-1_7b-psydt-merged
"""
import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from psydt_lora.cli import make_parser
from psydt_lora.errors import PsyDTError, run_cli
from psydt_lora.hub import HUBS, TEST_FILE
from psydt_lora.prompt import DEFAULT_SYSTEM
from psydt_lora.safety.guard import DEFAULT_GUARD

warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices are not for our users


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("与 LoRA 微调后的 Qwen3 心理咨询模型对话，或在 PsyDTCorpus 测试集上批量测试。")
    g = p.add_argument_group("模型")
    g.add_argument("--model_path", "--model_local_dir", dest="model_path", default="./Qwen/Qwen3-1.7B",
                   help="基础模型文件夹（--model_local_dir 是同一个参数，与训练脚本同名）")
    g.add_argument("--adapter_path", default="./output/qwen3-1_7b-psydt-lora/lora_adapter", help="LoRA adapter 文件夹")
    g.add_argument("--no_adapter", action="store_true", help="不加载 adapter，直接和基础模型对话")
    g.add_argument("--merge_lora", action="store_true", help="在内存中把 adapter 合并进权重（生成更快）")
    g.add_argument("--save_merged", default=None, metavar="DIR",
                   help="把基础模型 + adapter 合并保存为独立模型到 DIR（默认关闭思考的 chat template、训练时的系统提示词、"
                        "推荐的生成参数、模型卡），打印部署命令，然后退出")
    g.add_argument("--export", default=None, metavar="FORMATS",
                   help="和 --save_merged 一起用，另外导出：gguf（llama.cpp 用的完整模型和 LoRA GGUF，写到 DIR-gguf/）、"
                        "ollama（再加一个 Modelfile）；逗号分隔")
    g.add_argument("--gguf_types", default="f16,q8_0", help="完整模型 GGUF 的精度，逗号分隔：f32、f16、bf16、q8_0")
    g.add_argument("--llama_cpp", default=None, metavar="DIR",
                   help="llama.cpp 源码目录（含 convert_hf_to_gguf.py）；默认从 PyPI 的 llama-cpp-python 源码包取转换脚本")
    g.add_argument("--device", default="auto", help="运行设备：auto、cuda、cuda:1、cpu、mps")
    g.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto", help="auto：CUDA 支持时用 bf16，否则 fp32")
    g.add_argument("--trust_remote_code", action="store_true", help="允许模型文件夹运行它自带的 Python 代码")

    g = p.add_argument_group("对话与生成")
    g.add_argument("--mode", choices=("interactive", "test", "serve"), default="interactive",
                   help="interactive：终端对话；test：批量测试；serve：OpenAI 兼容 API + 网页对话")
    g.add_argument("--system_prompt", default=None, help="系统提示词；默认用 adapter 训练时的那一个")
    g.add_argument("--history_turns", type=int, default=6, help="对话中保留的历史轮数（0 = 不保留）")
    g.add_argument("--max_new_tokens", type=int, default=512, help="每条回复最多生成的 token 数")
    g.add_argument("--do_sample", action=argparse.BooleanOptionalAction, default=True, help="采样生成（--no-do_sample：贪心）")
    g.add_argument("--temperature", type=float, default=0.7, help="采样温度")
    g.add_argument("--top_p", type=float, default=0.8, help="nucleus 采样阈值")
    g.add_argument("--repetition_penalty", type=float, default=1.05, help="大于 1 时抑制重复")
    g.add_argument("--enable_thinking", action="store_true", help="让 Qwen3 先思考（训练时关闭，默认也关闭）")
    g.add_argument("--max_context", type=int, default=None, help="上下文窗口 token 数（默认取模型自身的）")
    g.add_argument("--seed", type=int, default=42, help="采样的随机种子")
    g.add_argument("--safety", choices=("on", "off"), default="on", help="危机语言检测、求助资源和回复过滤")
    g.add_argument("--safety_model", default=os.environ.get("PSYDT_SAFETY_MODEL", DEFAULT_GUARD),
                   help="第二层安全检测：Qwen3Guard-Gen 模型（hub id 或本地文件夹；缺失且能连上 hub 时下载到 ./<id>，"
                        "用不了时由基础模型代替），base（用基础模型做零样本判断），none（只用词典）；"
                        "默认值可用环境变量 PSYDT_SAFETY_MODEL 改")
    g.add_argument("--safety_eval", default=None, metavar="FILE",
                   help="只评估安全层后退出：读取 {\"positive\", \"negative\", \"harmful_replies\", \"safe_replies\"} 文本列表，"
                        "或 SOS-HL-1K / PsySUICIDE 的 JSON 文件，打印词典、--safety_model 那一层和两层合起来的召回率和误报率。"
                        "会加载 --safety_model（审核模型缺失时会下载；base 会加载基础模型）；只评估词典请加 --safety_model none")
    g.add_argument("--safety_resources", default=None, metavar="FILE",
                   help="求助资源 JSON 文件，替换内置的（中国大陆）列表")

    g = p.add_argument_group("批量测试（--mode test）")
    g.add_argument("--test_file", default=None, help="单轮拆分格式的测试文件；默认：adapter 训练时用 --val_size 留出的对话，"
                                                    f"否则 <dataset_dir>/{TEST_FILE}")
    g.add_argument("--dataset_repo", default="YIRONGCHEN/PsyDTCorpus", help="数据集在模型库上的 id（用于默认测试文件）")
    g.add_argument("--dataset_dir", default="./data/PsyDTCorpus", help="PsyDTCorpus 文件所在的文件夹")
    g.add_argument("--hub", choices=HUBS, default="modelscope", help="缺少文件时从哪里下载：批量测试的默认测试文件，以及 --safety_model 给出的审核模型（如 Qwen3Guard）")
    g.add_argument("--max_test_items", type=int, default=0, help="从不同对话中均匀取 N 条；0 = 全部")
    g.add_argument("--batch_size", type=int, default=8, help="一起生成的条目数（左侧 padding）")
    g.add_argument("--questions_file", default=None, help="问题文件（JSON 列表或每行一个），每个问题单独成一段对话")
    g.add_argument("--compare_base", action="store_true", help="每条再用关闭 adapter 的基础模型回答一次，并排打分")
    g.add_argument("--test_output_file", default="psydt_results.json", help="测试结果写到哪里（JSON）")

    g = p.add_argument_group("服务（--mode serve）")
    g.add_argument("--host", default="127.0.0.1", help="监听地址；只有本机能访问，给别人用时改成 0.0.0.0 并设置 API key")
    g.add_argument("--port", type=int, default=8000, help="端口；0 = 自动选一个空闲端口（启动时打印）")
    g.add_argument("--api_key", default=None, help="要求请求带上 Authorization: Bearer <key>（也可用环境变量 PSYDT_API_KEY）")
    g.add_argument("--max_concurrency", type=int, default=8, help="同时接受的请求数，超出时返回 429")
    g.add_argument("--backend", choices=("hf", "openai"), default="hf",
                   help="hf：在本进程里用 transformers 生成；openai：转发给 vLLM / SGLang 等 OpenAI 兼容引擎，本进程只做安全层")
    g.add_argument("--backend_url", default=None, help="--backend openai 时引擎的地址，例如 http://127.0.0.1:8001/v1")
    g.add_argument("--backend_model", default="psydt", help="--backend openai 时请求引擎的模型名")
    g.add_argument("--backend_api_key", default=None, help="引擎的 API key（也可用环境变量 PSYDT_BACKEND_API_KEY）")
    g.add_argument("--served_model_name", default="psydt", help="/v1/models 里报告的模型名")
    g.add_argument("--max_body_bytes", type=int, default=1 << 20, help="请求体上限（字节），超出返回 413")
    g.add_argument("--cors_origins", default=None, help="允许跨域访问的来源，逗号分隔（默认不允许）")
    g.add_argument("--crisis_help_in_content", action=argparse.BooleanOptionalAction, default=True,
                   help="危机轮次把求助资源放在回复内容的开头（只显示 content 的客户端也能看到）；"
                        "--no-crisis_help_in_content：只放在 safety 字段里，由客户端自己显示")
    return p


def check_args(args) -> None:
    for name in ("max_new_tokens", "batch_size"):
        if getattr(args, name) <= 0:
            raise PsyDTError(f"--{name} 必须是正数，收到 {getattr(args, name)}。")
    if args.history_turns < 0:
        raise PsyDTError(f"--history_turns 不能是负数，收到 {args.history_turns}。")
    if args.do_sample and args.temperature <= 0:
        raise PsyDTError("--temperature 必须大于 0（想要确定性输出请用 --no-do_sample）。")
    if not 0 < args.top_p <= 1:
        raise PsyDTError(f"--top_p 必须在 (0, 1] 之间，收到 {args.top_p}。")
    if args.no_adapter and (args.merge_lora or args.save_merged):
        raise PsyDTError("--no_adapter 不能和 --merge_lora / --save_merged 一起用。")
    if args.export:
        check_export_args(args)
    if args.mode == "serve":
        if args.backend == "openai" and not args.backend_url:
            raise PsyDTError("--backend openai 需要 --backend_url（例如 http://127.0.0.1:8001/v1）。")
        if not 0 <= args.port < 65536 or args.max_concurrency <= 0 or args.max_body_bytes <= 0:
            raise PsyDTError("--port 必须在 0–65535 之间，--max_concurrency 和 --max_body_bytes 必须是正数。")
        check_serve_extra(args.backend)
    if args.compare_base and (args.no_adapter or args.merge_lora):
        raise PsyDTError("--compare_base 需要加载未合并的 adapter：不能和 --no_adapter / --merge_lora 一起用。")


def check_export_args(args) -> None:
    """The export flags, and llama.cpp's converters at hand, before the weights are loaded."""
    from psydt_lora.export.gguf import converters, parse_types
    from psydt_lora.export.run import parse_formats

    if not args.save_merged:
        raise PsyDTError("--export 需要 --save_merged DIR（GGUF 从合并后的模型转换）。")
    if "gguf" in parse_formats(args.export):
        parse_types(args.gguf_types)
        converters(args.llama_cpp)


def check_serve_extra(backend: str) -> None:
    """The server's libraries are the optional `serve` extra (a user who only trains does not install them)."""
    import importlib.util

    needed = ("fastapi", "uvicorn", "openai") if backend == "openai" else ("fastapi", "uvicorn")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise PsyDTError(f"--mode serve 需要 {'、'.join(missing)}，没有安装：pip install -e '.[serve]'"
                         "（或 pip install -r requirements.txt，它包含 serve）。")


def check_local(args) -> None:
    """Every local path, in a moment, before any download or weight load."""
    from psydt_lora.files import check_can_write, check_files_exist
    from psydt_lora.models import check_inference_paths

    if not (args.mode == "serve" and args.backend == "openai"):  # a remote engine needs no local weights
        check_inference_paths(args.model_path, None if args.no_adapter else args.adapter_path)
    test_file = args.test_file if args.mode == "test" and not args.questions_file else None
    check_files_exist({"--test_file": test_file, "--questions_file": args.questions_file,
                       "--safety_resources": args.safety_resources})
    if args.save_merged:
        check_can_write(args.save_merged, "--save_merged")
    elif args.mode == "test":
        check_can_write(args.test_output_file, "--test_output_file")


def test_items(args, system, record=None):
    from psydt_lora.evaluation.batch_run import questions_as_items, read_questions
    from psydt_lora.data.dialogues import check_format, read_dialogues, select_spread
    from psydt_lora.hub import ensure_dataset_file

    if args.questions_file:
        return questions_as_items(read_questions(args.questions_file), system), str(args.questions_file)
    if args.test_file:  # check_local made sure it is there
        path = Path(args.test_file)
    elif heldout_file(record):
        path = heldout_file(record)
        print(f"[测试] 使用训练时留出的验证对话 {path}（--val_size；它们没有参与训练）")
    else:
        path = ensure_dataset_file(args.dataset_repo, args.dataset_dir, TEST_FILE, args.hub)
    items, _ = read_dialogues(path)
    check_format(items, path, expect_split=True, flag="--test_file")
    return select_spread(items, args.max_test_items), str(path)


def heldout_file(record) -> Path | None:
    """The held-out dialogues the adapter's training set aside (--val_size), when that file is still there."""
    path = record.heldout_file if record else None
    return Path(path) if path and Path(path).is_file() else None


def _loss_curve(adapter):
    """The training run's loss curve, saved in the adapter folder by training."""
    if adapter is None:
        return None
    path = Path(adapter) / "loss_curve.png"
    return path if path.is_file() else None


def startup_summary(args, model, device, adapter, where, settings, limit) -> str:
    """Where the model runs and how it will answer, before the first reply."""
    import torch

    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else device
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    lora = "（不加载）" if adapter is None else f"{args.adapter_path}{'（已合并）' if args.merge_lora else ''}"
    lines = [f"[运行] 模型：{args.model_path}；LoRA：{lora}",
             f"[运行] 设备：{device}（{name}）；精度：{dtype}；注意力实现：{attention}；上下文 {limit} token",
             f"[运行] 生成：{settings.describe()}；系统提示词来自：{where}"]
    if device == "cpu":
        lines.append("[提示] 没有使用 GPU，在 CPU 上生成会比较慢。")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.safety_eval:
        return run_safety_eval(args)
    check_local(args)
    from psydt_lora.inference.generation import GenerationSettings
    from psydt_lora.run_record import RunRecord
    from psydt_lora.safety.session import Safety

    safety = Safety(args.safety_resources) if args.safety == "on" else None
    settings = GenerationSettings(args.max_new_tokens, args.do_sample, args.temperature, args.top_p,
                                  args.repetition_penalty, args.enable_thinking)
    adapter = None if args.no_adapter else args.adapter_path
    record = RunRecord.read(adapter) if adapter and Path(adapter).is_dir() else None
    trained_system = record.system_prompt if record else None
    system = args.system_prompt if args.system_prompt is not None else (trained_system or DEFAULT_SYSTEM)
    where = "--system_prompt" if args.system_prompt is not None else ("训练数据" if trained_system else "内置默认")
    if args.mode == "serve" and args.backend == "openai":  # no weights here: a remote engine generates
        add_guard(args, safety, None)
        return run_serve(args, None, safety, settings, system, adapter)
    # read the test data before loading weights, so a bad file fails in a second, not after a minute
    items = source = None
    if args.mode == "test" and not args.save_merged:
        items, source = test_items(args, system, record)
    loaded = load(args, adapter, record)
    if args.save_merged:
        from psydt_lora.export.run import run_export

        return run_export(args, loaded.model, loaded.tokenizer, loaded.record, system, settings)
    print(startup_summary(args, loaded.model, loaded.device, adapter, where, settings, loaded.context_limit))
    add_guard(args, safety, loaded)
    if safety is None:
        print("[警告] 安全层已关闭（--safety off）：不会检测危机语言、不会显示求助资源、不会过滤回复。")
    if args.mode == "serve":
        return run_serve(args, loaded, safety, settings, system, adapter)
    if args.mode == "interactive":
        return run_chat(args, loaded, safety, settings, system, adapter)
    return run_batch_test(args, loaded, safety, settings, items, source, adapter)


def add_guard(args, safety, loaded) -> None:
    """The second safety layer (--safety_model), loaded once; one line says which layers run and why."""
    if safety is None:
        return
    choice = guard_for(args, loaded)
    safety.guard = choice.guard
    print(f"[安全] 启用的安全层：{safety.layers()}（{choice.why}）", flush=True)


def guard_for(args, loaded):
    """The GuardChoice of --safety_model, on the device inference uses; `loaded` is what `base` and the
    fallback need, None when no model is loaded here."""
    from psydt_lora.safety.guard import load_guard
    from psydt_lora.models import pick_device

    model, tokenizer, device = (loaded.model, loaded.tokenizer, loaded.device) if loaded else (None, None, pick_device(args.device))
    return load_guard(args.safety_model, args.hub, model, tokenizer, device)


def run_safety_eval(args) -> int:
    """Counts, recall and false alarms of each safety layer and of any of them on a file of texts; the last
    line is JSON. Loads the guard of --safety_model (the base model too for `base`); a layer that cannot
    run is named, with why."""
    import json

    from tqdm import tqdm

    from psydt_lora.safety.measurement import evaluate_layers, guard_layer, lexicon_layer, read_eval_cases, report_lines

    cases = read_eval_cases(args.safety_eval)
    layers, missing, guard = {"lexicon": lexicon_layer()}, {}, None
    if args.safety_model != "none":
        loaded = load(args, None if args.no_adapter else args.adapter_path) if args.safety_model == "base" else None
        choice = guard_for(args, loaded)
        guard = choice.guard
        if guard is None:
            missing[args.safety_model] = choice.why
        else:
            layers[guard.name] = guard_layer(guard)
    print(f"[安全评估] 评估的层：{'、'.join(layers)}" + (f"；没能运行：{'、'.join(f'{k}（{v}）' for k, v in missing.items())}"
                                                 if missing else ""), flush=True)
    results = evaluate_layers(cases, layers, progress=(lambda it, desc: tqdm(it, desc=desc, leave=False)) if guard else None)
    print("\n".join(report_lines(results)))
    if guard is not None:
        print(f"[安全评估] 审核模型平均 {guard.ms_per_call():.0f} ms/次，格式不符 {guard.malformed} 次")
    print(json.dumps({"file": str(args.safety_eval), "layers": list(layers), "not_run": missing, "results": results},
                     ensure_ascii=False))
    return 0


@dataclass
class Loaded:
    """What `load` gives the modes."""
    model: object
    tokenizer: object
    record: object  # the adapter's RunRecord, or None
    device: str
    context_limit: int


def load(args, adapter, record=None) -> Loaded:
    """The model ready for inference, with a note when thinking differs from training."""
    from psydt_lora.inference.generation import context_limit
    from psydt_lora.models import load_for_inference

    model, tokenizer, record, device = load_for_inference(
        args.model_path, adapter, merge=args.merge_lora or bool(args.save_merged), device=args.device,
        dtype=args.dtype, trust_remote_code=args.trust_remote_code, record=record)
    fmt = record.prompt_format if record else {}
    if fmt and fmt.get("enable_thinking", False) != args.enable_thinking:
        print(f"[提示] adapter 训练时 enable_thinking={fmt.get('enable_thinking')}，现在是 {args.enable_thinking}。")
    return Loaded(model, tokenizer, record, device, context_limit(model, args.max_context))


def run_chat(args, loaded, safety, settings, system, adapter) -> int:
    from transformers import set_seed

    from psydt_lora.inference.chat import DISCLAIMER, Chat
    from psydt_lora.safety.resources import format_resources

    print(DISCLAIMER)
    if safety is not None:
        print(f"{format_resources(safety.resources)}\n（求助资源来自：{safety.source}）")
    print("输入 /help 查看命令。")
    set_seed(args.seed)
    chat = Chat(loaded.model, loaded.tokenizer, settings, system=system, history_turns=args.history_turns,
                context_limit=loaded.context_limit,
                can_compare=adapter is not None and not args.merge_lora, safety=safety)
    chat.loop()
    return 0


def run_batch_test(args, loaded, safety, settings, items, source, adapter) -> int:
    from psydt_lora.evaluation.batch_run import BatchRun, run_test
    from psydt_lora.evaluation.report import summary_lines

    meta = {
        "model": str(args.model_path),
        "adapter": None if adapter is None else str(adapter),
        "merged": args.merge_lora,
        "test_file": source,
        "max_test_items": args.max_test_items,
        "system_prompt": "questions_file" if args.questions_file else ("override" if args.system_prompt is not None else "from each item"),
        "seed": args.seed,
        "safety": "off" if safety is None else f"on（资源：{safety.source}）",
        "device": loaded.device,
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    override = args.system_prompt if not args.questions_file else None
    run = BatchRun(args.test_output_file, args.batch_size, loaded.context_limit, meta, system_override=override,
                   compare_base=args.compare_base, loss_curve=_loss_curve(adapter))
    report = run_test(loaded.model, loaded.tokenizer, items, settings, run, safety=safety)
    m = report["meta"]
    if safety is not None:
        sm = m["safety"]
        print(f"[安全] 含危机信号的条目 {sm['crisis_items']} 条（紧急 {sm['imminent_items']}），被过滤的回复 {sm['screened_responses']} 条")
        if safety.guard is not None:
            print(f"[安全] {safety.guard_cost()}")
    print("\n".join(summary_lines(report)))
    if m.get("hit_max_new_tokens"):
        print(f"[提示] {m['hit_max_new_tokens']} 条回复在 --max_new_tokens {args.max_new_tokens} 处被截断")
    print(f"[完成] {m['items']} 条结果写入 {args.test_output_file}（本次生成 {m['generated_this_run']} 条，"
          f"{m['seconds_this_run']} 秒，{m['tokens_per_second']} token/s）")
    return 0


def run_serve(args, loaded, safety, settings, system, adapter) -> int:
    """The HTTP API and chat page; `loaded` is None for the openai backend (a remote engine generates)."""
    import os

    from psydt_lora.inference import serving
    from psydt_lora.inference.chat import DISCLAIMER

    key = args.api_key or os.environ.get("PSYDT_API_KEY") or None
    config = serving.ServeConfig(
        model_name=args.served_model_name, system=system, history_turns=args.history_turns, settings=settings,
        max_tokens_cap=args.max_new_tokens, max_body_bytes=args.max_body_bytes, api_key=key,
        max_concurrency=args.max_concurrency, disclaimer=DISCLAIMER, help_in_content=args.crisis_help_in_content,
        cors_origins=[o.strip() for o in (args.cors_origins or "").split(",") if o.strip()])
    if loaded is None:
        backend = serving.OpenAIBackend(args.backend_url, args.backend_model, args.backend_api_key
                                        or os.environ.get("PSYDT_BACKEND_API_KEY"), *remote_tokenizer(args, adapter))
        print(f"[服务] 生成交给 {args.backend_url}（模型 {args.backend_model}），本进程负责安全层")
        if safety is None:
            print("[警告] 安全层已关闭（--safety off）：不会检测危机语言、不会显示求助资源、不会过滤回复。")
    else:
        # a guard on this same model (--safety_model base) switches the adapter off: never during a generation
        lock = safety.guard.lock if safety is not None and getattr(safety.guard, "model", None) is loaded.model else None
        backend = serving.HFBackend(loaded.model, loaded.tokenizer, loaded.context_limit, lock=lock)
    if args.host not in serving.LOCAL_HOSTS and not key:
        print(f"[警告] 服务监听 {args.host}，局域网/公网上的任何人都能访问，而且没有设置 API key（--api_key 或环境变量 PSYDT_API_KEY）。")

    def announce(port):  # the port bound (--port 0 picks a free one)
        print(f"[服务] 对话页面 http://{args.host}:{port}/ ；OpenAI 兼容接口 http://{args.host}:{port}/v1"
              f"（模型名 {config.model_name}，最多同时处理 {config.max_concurrency} 个请求）。按 Ctrl-C 停止。", flush=True)

    serving.serve(serving.create_app(backend, safety, config), args.host, args.port, announce)
    return 0


def remote_tokenizer(args, adapter):
    """For the openai backend: the local tokenizer (adapter folder, else model folder) to fit the history into
    --max_context tokens; without one, the history window alone applies."""
    from psydt_lora.models import DEFAULT_CONTEXT, load_tokenizer

    for folder in (adapter, args.model_path):
        if folder and (Path(folder) / "tokenizer_config.json").is_file():
            return load_tokenizer(folder, args.trust_remote_code), args.max_context or DEFAULT_CONTEXT
    return None, None


def cli() -> int:
    """The `psydt-chat` console command and `python LLM_fine_turning/inference_psydt_lora.py`."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
