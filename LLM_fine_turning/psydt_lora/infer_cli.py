"""Talk to Qwen3 + the PsyDTCorpus LoRA adapter, test it, serve it, export it: five small programs over one
runtime (inference.runtime), each a subcommand with its own --help.

    psydt-chat chat                       # chat in the terminal (streaming; /help lists the commands)
    psydt-chat test --max_test_items 50 --no-do_sample --batch_size 8
    psydt-chat test --questions_file questions.txt
    psydt-chat serve                      # OpenAI-compatible API + chat page
    psydt-chat export --save_merged ./output/qwen3-1_7b-psydt-merged [--export gguf,ollama]
    psydt-chat safety-eval FILE --safety_model none

The tutorial's flat form keeps working exactly (`python LLM_fine_turning/inference_psydt_lora.py [--mode
interactive|test|serve] ...`, `--save_merged DIR`, `--safety_eval FILE`): it is parsed by the old flat parser
and mapped onto the same subcommands. The parsers turn flags into typed frozen settings (inference.settings,
GenerationSettings, export.run.ExportConfig); the programs receive those, never the namespace.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import sys
import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from psydt_lora.cli import HelpFormatter, make_parser
from psydt_lora.data.dialogues import check_format, read_dialogues, select_spread
from psydt_lora.errors import PsyDTError, run_cli
from psydt_lora.evaluation.batch_run import BatchRun, questions_as_items, read_questions, run_test
from psydt_lora.evaluation.report import summary_lines
from psydt_lora.export.gguf import converters, parse_types
from psydt_lora.export.run import ExportConfig, parse_formats, run_export
from psydt_lora.files import check_can_write, check_files_exist
from psydt_lora.hub import HUBS, TEST_FILE, ensure_dataset_file
from psydt_lora.inference import runtime, serving
from psydt_lora.inference.chat import DISCLAIMER, Chat
from psydt_lora.inference.generation import GenerationSettings
from psydt_lora.inference.settings import (BatchSettings, ConversationSettings, ModelSettings, SafetySettings,
                                           ServerSettings)
from psydt_lora.models import check_inference_paths, pick_device
from psydt_lora.run_record import RunRecord
from psydt_lora.safety.guard import DEFAULT_GUARD, load_guard
from psydt_lora.safety.measurement import evaluate_layers, guard_layer, lexicon_layer, read_eval_cases, report_lines
from psydt_lora.safety.resources import load_resources

warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices are not for our users

COMMANDS = {"chat": "终端多轮对话（流式输出，/help 查看命令）",
            "test": "在测试集或一组问题上批量生成并评分",
            "serve": "OpenAI 兼容 API + 网页对话",
            "export": "把 adapter 合并进基础模型保存为独立模型（可再导出 GGUF / Ollama），打印部署命令",
            "safety-eval": "只评估安全层：词典、--safety_model 那一层和两层合起来的召回率和误报率"}
MODES = {"interactive": "chat", "test": "test", "serve": "serve"}  # the flat form's --mode


# -- flags ---------------------------------------------------------------------------------------------
def model_flags(p, *, merge: bool = True) -> None:
    g = p.add_argument_group("模型")
    g.add_argument("--model_path", "--model_local_dir", dest="model_path", default="./Qwen/Qwen3-1.7B",
                   help="基础模型文件夹（--model_local_dir 是同一个参数，与训练脚本同名）")
    g.add_argument("--adapter_path", default="./output/qwen3-1_7b-psydt-lora/lora_adapter", help="LoRA adapter 文件夹")
    if merge:
        g.add_argument("--no_adapter", action="store_true", help="不加载 adapter，直接和基础模型对话")
        g.add_argument("--merge_lora", action="store_true", help="在内存中把 adapter 合并进权重（生成更快）")
    g.add_argument("--device", default="auto", help="运行设备：auto、cuda、cuda:1、cpu、mps")
    g.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto", help="auto：CUDA 支持时用 bf16，否则 fp32")
    g.add_argument("--trust_remote_code", action="store_true", help="允许模型文件夹运行它自带的 Python 代码")
    g.add_argument("--hub", choices=HUBS, default="modelscope", help="缺少文件时从哪里下载：批量测试的默认测试文件，以及 --safety_model 给出的审核模型（如 Qwen3Guard）")


def export_flags(p, *, required: bool) -> None:
    g = p.add_argument_group("导出")
    g.add_argument("--save_merged", default=None, metavar="DIR", required=required,
                   help="把基础模型 + adapter 合并保存为独立模型到 DIR（默认关闭思考的 chat template、训练时的系统提示词、"
                        "推荐的生成参数、模型卡），打印部署命令，然后退出")
    g.add_argument("--export", default=None, metavar="FORMATS",
                   help="和 --save_merged 一起用，另外导出：gguf（llama.cpp 用的完整模型和 LoRA GGUF，写到 DIR-gguf/）、"
                        "ollama（再加一个 Modelfile）；逗号分隔")
    g.add_argument("--gguf_types", default="f16,q8_0", help="完整模型 GGUF 的精度，逗号分隔：f32、f16、bf16、q8_0")
    g.add_argument("--llama_cpp", default=None, metavar="DIR",
                   help="llama.cpp 源码目录（含 convert_hf_to_gguf.py）；默认从 PyPI 的 llama-cpp-python 源码包取转换脚本")


def generation_flags(p, *, conversation: bool = True, mode: bool = False) -> None:
    g = p.add_argument_group("对话与生成")
    if mode:  # the flat form's program choice (None: interactive, unless --save_merged / --safety_eval)
        g.add_argument("--mode", choices=tuple(MODES), default=None,
                       help="interactive（默认）：终端对话；test：批量测试；serve：OpenAI 兼容 API + 网页对话")
    g.add_argument("--system_prompt", default=None, help="系统提示词；默认用 adapter 训练时的那一个")
    if conversation:
        g.add_argument("--history_turns", type=int, default=6, help="对话中保留的历史轮数（0 = 不保留）")
    g.add_argument("--max_new_tokens", type=int, default=512, help="每条回复最多生成的 token 数")
    g.add_argument("--do_sample", action=argparse.BooleanOptionalAction, default=True, help="采样生成（--no-do_sample：贪心）")
    g.add_argument("--temperature", type=float, default=0.7, help="采样温度")
    g.add_argument("--top_p", type=float, default=0.8, help="nucleus 采样阈值")
    g.add_argument("--repetition_penalty", type=float, default=1.05, help="大于 1 时抑制重复")
    g.add_argument("--enable_thinking", action="store_true", help="让 Qwen3 先思考（训练时关闭，默认也关闭）")
    if conversation:
        g.add_argument("--max_context", type=int, default=None, help="上下文窗口 token 数（默认取模型自身的）")
        g.add_argument("--seed", type=int, default=42, help="采样的随机种子")


def safety_flags(p, *, layer_only: bool = False) -> None:
    g = p.add_argument_group("安全层")
    if not layer_only:
        g.add_argument("--safety", choices=("on", "off"), default="on", help="危机语言检测、求助资源和回复过滤")
    g.add_argument("--safety_model", default=os.environ.get("PSYDT_SAFETY_MODEL", DEFAULT_GUARD),
                   help="第二层安全检测：Qwen3Guard-Gen 模型（hub id 或本地文件夹；缺失且能连上 hub 时下载到 ./<id>，"
                        "用不了时由基础模型代替），base（用基础模型做零样本判断），none（只用词典）；"
                        "默认值可用环境变量 PSYDT_SAFETY_MODEL 改")
    if not layer_only:
        g.add_argument("--safety_resources", default=None, metavar="FILE",
                       help="求助资源 JSON 文件，替换内置的（中国大陆）列表")


SAFETY_EVAL_HELP = ("只评估安全层后退出：读取 {\"positive\", \"negative\", \"harmful_replies\", \"safe_replies\"} 文本列表，"
                    "或 SOS-HL-1K / PsySUICIDE 的 JSON 文件，打印词典、--safety_model 那一层和两层合起来的召回率和误报率。"
                    "会加载 --safety_model（审核模型缺失时会下载；base 会加载基础模型）；只评估词典请加 --safety_model none")


def batch_flags(p) -> None:
    g = p.add_argument_group("批量测试（test）")
    g.add_argument("--test_file", default=None, help="单轮拆分格式的测试文件；默认：adapter 训练时用 --val_size 留出的对话，"
                                                    f"否则 <dataset_dir>/{TEST_FILE}")
    g.add_argument("--dataset_repo", default="YIRONGCHEN/PsyDTCorpus", help="数据集在模型库上的 id（用于默认测试文件）")
    g.add_argument("--dataset_dir", default="./data/PsyDTCorpus", help="PsyDTCorpus 文件所在的文件夹")
    g.add_argument("--max_test_items", type=int, default=0, help="从不同对话中均匀取 N 条；0 = 全部")
    g.add_argument("--batch_size", type=int, default=8, help="一起生成的条目数（左侧 padding）")
    g.add_argument("--questions_file", default=None, help="问题文件（JSON 列表或每行一个），每个问题单独成一段对话")
    g.add_argument("--compare_base", action="store_true", help="每条再用关闭 adapter 的基础模型回答一次，并排打分")
    g.add_argument("--test_output_file", default="psydt_results.json", help="测试结果写到哪里（JSON）")


def serve_flags(p) -> None:
    g = p.add_argument_group("服务（serve）")
    g.add_argument("--host", default="127.0.0.1", help="监听地址；只有本机能访问，给别人用时改成 0.0.0.0 并设置 API key")
    g.add_argument("--port", type=int, default=8000, help="端口；0 = 自动选一个空闲端口（启动时打印）")
    g.add_argument("--api_key", default=None, help="要求请求带上 Authorization: Bearer <key>（也可用环境变量 PSYDT_API_KEY）")
    g.add_argument("--max_concurrency", type=int, default=8, help="同时处理的请求数，超出的排队等待（见 --max_queue）")
    g.add_argument("--max_queue", type=int, default=None,
                   help="最多几个请求排队等位置（默认 --max_concurrency 的 4 倍；0 = 不排队），队列满时返回 429；危机消息排在最前")
    g.add_argument("--queue_timeout", type=float, default=60.0, help="一个请求最多排队几秒，超时返回 429（带 Retry-After）")
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


def build_parser() -> argparse.ArgumentParser:
    """The flat form of the tutorial (no subcommand): every flag, --mode choosing the program."""
    p = make_parser("与 LoRA 微调后的 Qwen3 心理咨询模型对话，或在 PsyDTCorpus 测试集上批量测试。",
                    epilog="也可以用子命令：chat、test、serve、export、safety-eval（例如 `psydt-chat serve --help`）；"
                           "不写子命令时就是这里的写法，--mode / --save_merged / --safety_eval 对应到同样的子命令。")
    model_flags(p)
    export_flags(p, required=False)
    generation_flags(p, mode=True)
    safety_flags(p)
    p.add_argument_group("安全评估").add_argument("--safety_eval", default=None, metavar="FILE", help=SAFETY_EVAL_HELP)
    batch_flags(p)
    serve_flags(p)
    return p


def build_command_parser() -> argparse.ArgumentParser:
    """`psydt-chat <command> ...`: one small parser per program."""
    p = make_parser("与 LoRA 微调后的 Qwen3 心理咨询模型对话、批量测试、提供服务、导出，或评估安全层。")
    sub = p.add_subparsers(dest="command", title="子命令", metavar="命令", required=True)
    for name, text in COMMANDS.items():
        c = sub.add_parser(name, prog=f"{p.prog} {name}", help=text, description=text, formatter_class=HelpFormatter,
                           add_help=False, usage=f"%(prog)s [选项]{' FILE' if name == 'safety-eval' else ''}")
        c._optionals.title = "其他选项"
        c.add_argument("-h", "--help", action="help", help="显示本帮助并退出")
        if name == "safety-eval":
            c.add_argument("file", metavar="FILE", help=SAFETY_EVAL_HELP)
            model_flags(c)
            safety_flags(c, layer_only=True)
            continue
        model_flags(c, merge=name != "export")
        generation_flags(c, conversation=name != "export")
        if name == "export":
            export_flags(c, required=True)
            continue
        safety_flags(c)
        if name == "test":
            batch_flags(c)
        elif name == "serve":
            serve_flags(c)
    return p


def parse(argv) -> tuple[str, argparse.Namespace]:
    """(the program, its flags): a subcommand, or the flat form mapped onto one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        ns = build_command_parser().parse_args(argv)
        return ns.command, ns
    ns = build_parser().parse_args(argv)
    return flat_command(ns), ns


def flat_command(ns) -> str:
    """--save_merged and --safety_eval are programs of their own; with an explicit --mode beside them the user
    meant two things at once: say so instead of silently choosing one."""
    given = [flag for flag, value in (("--save_merged", ns.save_merged), ("--safety_eval", ns.safety_eval)) if value]
    if len(given) > 1:
        raise PsyDTError("--save_merged 和 --safety_eval 是两个单独的程序，不能一起用：请分两次运行"
                         "（子命令写法：export --save_merged DIR；safety-eval FILE）。")
    if given and ns.mode is not None:
        program = "export" if given[0] == "--save_merged" else "safety-eval"
        raise PsyDTError(f"{given[0]} 不能和 --mode {ns.mode} 一起用：{given[0]} 是单独的程序（{program}），"
                         f"它不会对话、测试或提供服务。请去掉 --mode {ns.mode}，或分两次运行。")
    if ns.save_merged:
        return "export"
    if ns.safety_eval:
        ns.file = ns.safety_eval
        return "safety-eval"
    return MODES[ns.mode or "interactive"]


# -- typed settings --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Invocation:
    """One start of an inference program, as typed settings."""
    command: str
    model: ModelSettings
    generation: GenerationSettings
    conversation: ConversationSettings
    safety: SafetySettings
    batch: BatchSettings | None = None
    server: ServerSettings | None = None
    export: ExportConfig | None = None
    eval_file: str | None = None


def settings_from_flags(command: str, ns) -> Invocation:
    """The namespace read once, checked, into typed settings; the programs never see `ns`."""
    check_flags(command, ns)
    export = command == "export"
    no_adapter = getattr(ns, "no_adapter", False)
    model = ModelSettings(ns.model_path, None if no_adapter else ns.adapter_path,
                          merge=export or getattr(ns, "merge_lora", False), device=ns.device, dtype=ns.dtype,
                          trust_remote_code=ns.trust_remote_code, max_context=getattr(ns, "max_context", None), hub=ns.hub)
    if command == "safety-eval":
        return Invocation(command, model, GenerationSettings(), ConversationSettings(),
                          SafetySettings(guard=ns.safety_model), eval_file=ns.file)
    generation = GenerationSettings(ns.max_new_tokens, ns.do_sample, ns.temperature, ns.top_p, ns.repetition_penalty,
                                    ns.enable_thinking)
    if export:
        return Invocation(command, model, generation, ConversationSettings(ns.system_prompt), SafetySettings(enabled=False),
                          export=ExportConfig(ns.save_merged, tuple(parse_formats(ns.export)), ns.gguf_types, ns.llama_cpp))
    conversation = ConversationSettings(ns.system_prompt, ns.history_turns, ns.seed)
    safety = SafetySettings(ns.safety == "on", ns.safety_model, ns.safety_resources)
    inv = Invocation(command, model, generation, conversation, safety)
    if command == "test":
        return replace(inv, batch=BatchSettings(ns.test_output_file, ns.test_file, ns.questions_file, ns.dataset_repo,
                                                ns.dataset_dir, ns.max_test_items, ns.batch_size, ns.compare_base))
    if command == "serve":
        return replace(inv, server=server_settings(ns))
    return inv


def server_settings(ns) -> ServerSettings:
    return ServerSettings(
        ns.host, ns.port, ns.api_key or os.environ.get("PSYDT_API_KEY") or None, ns.max_concurrency, ns.backend,
        ns.backend_url, ns.backend_model, ns.backend_api_key or os.environ.get("PSYDT_BACKEND_API_KEY"),
        ns.served_model_name, ns.max_body_bytes, tuple(o.strip() for o in (ns.cors_origins or "").split(",") if o.strip()),
        ns.crisis_help_in_content, max_queue=4 * ns.max_concurrency if ns.max_queue is None else ns.max_queue,
        queue_timeout=ns.queue_timeout)


def check_flags(command: str, ns) -> None:
    """Values that cannot work, in a moment, before anything is loaded."""
    if command == "safety-eval":
        return
    for name in ("max_new_tokens", "batch_size"):
        if getattr(ns, name, 1) <= 0:
            raise PsyDTError(f"--{name} 必须是正数，收到 {getattr(ns, name)}。")
    if getattr(ns, "history_turns", 0) < 0:
        raise PsyDTError(f"--history_turns 不能是负数，收到 {ns.history_turns}。")
    if ns.do_sample and ns.temperature <= 0:
        raise PsyDTError("--temperature 必须大于 0（想要确定性输出请用 --no-do_sample）。")
    if not 0 < ns.top_p <= 1:
        raise PsyDTError(f"--top_p 必须在 (0, 1] 之间，收到 {ns.top_p}。")
    if getattr(ns, "no_adapter", False) and (ns.merge_lora or command == "export"):
        raise PsyDTError("--no_adapter 不能和 --merge_lora / --save_merged 一起用。")
    if getattr(ns, "export", None):
        if command != "export":
            raise PsyDTError("--export 需要 --save_merged DIR（GGUF 从合并后的模型转换）。")
        if "gguf" in parse_formats(ns.export):  # llama.cpp's converters at hand, before the weights are loaded
            parse_types(ns.gguf_types)
            converters(ns.llama_cpp)
    if command == "serve":
        if ns.backend == "openai" and not ns.backend_url:
            raise PsyDTError("--backend openai 需要 --backend_url（例如 http://127.0.0.1:8001/v1）。")
        if not 0 <= ns.port < 65536 or ns.max_concurrency <= 0 or ns.max_body_bytes <= 0:
            raise PsyDTError("--port 必须在 0–65535 之间，--max_concurrency 和 --max_body_bytes 必须是正数。")
        if (ns.max_queue is not None and ns.max_queue < 0) or not ns.queue_timeout > 0:
            raise PsyDTError(f"--max_queue 不能是负数（收到 {ns.max_queue}），--queue_timeout 必须大于 0（收到 {ns.queue_timeout}）。")
        check_serve_extra(ns.backend)
    if command == "test" and ns.compare_base and (ns.no_adapter or ns.merge_lora):
        raise PsyDTError("--compare_base 需要加载未合并的 adapter：不能和 --no_adapter / --merge_lora 一起用。")


def check_serve_extra(backend: str) -> None:
    """The server's libraries are the optional `serve` extra (a user who only trains does not install them)."""
    needed = ("fastapi", "uvicorn", "openai") if backend == "openai" else ("fastapi", "uvicorn")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise PsyDTError(f"serve 需要 {'、'.join(missing)}，没有安装：pip install -e '.[serve]'"
                         "（或 pip install -r requirements.txt，它包含 serve）。")


def check_local(inv: Invocation) -> None:
    """Every local path, in a moment, before any download or weight load."""
    remote = inv.server is not None and inv.server.remote  # a remote engine needs no local weights
    if inv.command != "safety-eval" and not remote:
        check_inference_paths(inv.model.model_path, inv.model.adapter_path)
    batch = inv.batch
    check_files_exist({"--test_file": batch.test_file if batch and not batch.questions_file else None,
                       "--questions_file": batch.questions_file if batch else None,
                       "--safety_resources": inv.safety.resources})
    if inv.safety.enabled and inv.safety.resources:
        load_resources(inv.safety.resources)  # a malformed file fails now, not after the weights are loaded
    if inv.export:
        check_can_write(inv.export.output_dir, "--save_merged")
    elif batch:
        check_can_write(batch.output_file, "--test_output_file")


# -- the programs --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    command, ns = parse(argv)
    inv = settings_from_flags(command, ns)
    if command == "safety-eval":
        return run_safety_eval(inv)
    check_local(inv)
    adapter = inv.model.adapter_path
    record = RunRecord.read(adapter) if adapter and Path(adapter).is_dir() else None  # read once, passed down
    return PROGRAMS[command](inv, record)


def announce(rt: runtime.Runtime) -> None:
    """The start lines every program that talks prints: where and how it runs, which safety layers."""
    if rt.model is not None:
        print(rt.summary())
    print(rt.safety.start_line(), flush=True)


def run_chat(inv: Invocation, record) -> int:
    from transformers import set_seed

    rt = runtime.open_runtime(inv.model, inv.generation, inv.conversation, inv.safety, record)
    announce(rt)
    print(DISCLAIMER)
    if rt.safety.banner():
        print(rt.safety.banner())
    print("输入 /help 查看命令。")
    set_seed(inv.conversation.seed)
    chat = Chat(rt.model, rt.tokenizer, rt.generation, system=rt.system, history_turns=inv.conversation.history_turns,
                context_limit=rt.context_limit, can_compare=rt.can_compare, safety=rt.safety)
    chat.loop()
    return 0


def batch_items(batch: BatchSettings, hub: str, system, record):
    """The test items and where they came from: read before the weights, so a bad file fails in a second."""
    if batch.questions_file:
        return questions_as_items(read_questions(batch.questions_file), system), str(batch.questions_file)
    heldout = heldout_file(record)
    if batch.test_file:  # check_local made sure it is there
        path = Path(batch.test_file)
    elif heldout:
        path = heldout
        print(f"[测试] 使用训练时留出的验证对话 {path}（--val_size；它们没有参与训练）")
    else:
        path = ensure_dataset_file(batch.dataset_repo, batch.dataset_dir, TEST_FILE, hub)
    items, _ = read_dialogues(path)
    check_format(items, path, expect_split=True, flag="--test_file")
    return select_spread(items, batch.max_test_items), str(path)


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


def run_batch_test(inv: Invocation, record) -> int:
    batch = inv.batch
    system, _ = runtime.system_prompt(inv.conversation, record)
    items, source = batch_items(batch, inv.model.hub, system, record)
    rt = runtime.open_runtime(inv.model, inv.generation, inv.conversation, inv.safety, record)
    announce(rt)
    override = inv.conversation.system_prompt if not batch.questions_file else None
    meta = {
        "model": str(inv.model.model_path),
        "adapter": None if rt.adapter is None else str(rt.adapter),
        "merged": inv.model.merge,
        "test_file": source,
        "max_test_items": batch.max_test_items,
        "system_prompt": "questions_file" if batch.questions_file else ("override" if override is not None else "from each item"),
        "seed": inv.conversation.seed,
        "safety": rt.safety.describe(),
        "device": rt.device,
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    run = BatchRun(batch.output_file, batch.batch_size, rt.context_limit, meta, system_override=override,
                   compare_base=batch.compare_base, loss_curve=_loss_curve(rt.adapter))
    report = run_test(rt.model, rt.tokenizer, items, rt.generation, run, safety=rt.safety)
    batch_summary_lines(report, rt, batch)
    return 0


def batch_summary_lines(report, rt: runtime.Runtime, batch: BatchSettings) -> None:
    m = report["meta"]
    sm = m.get("safety")
    if isinstance(sm, dict):  # the batch's safety counts ("off" with the layer off)
        print(f"[安全] 含危机信号的条目 {sm['crisis_items']} 条（紧急 {sm['imminent_items']}），被过滤的回复 {sm['screened_responses']} 条")
    cost = rt.safety.guard_cost()
    if cost:
        print(f"[安全] {cost}")
    print("\n".join(summary_lines(report)))
    if m.get("hit_max_new_tokens"):
        print(f"[提示] {m['hit_max_new_tokens']} 条回复在 --max_new_tokens {rt.generation.max_new_tokens} 处被截断")
    print(f"[完成] {m['items']} 条结果写入 {batch.output_file}（本次生成 {m['generated_this_run']} 条，"
          f"{m['seconds_this_run']} 秒，{m['tokens_per_second']} token/s）")


def run_serve(inv: Invocation, record) -> int:
    """The server; Ctrl-C, while loading or once uvicorn has shut down (it raises the signal again, see
    serving.serve), ends it with one line and exit status 130, never a traceback."""
    try:
        return serve_until_stopped(inv, record)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):  # stderr may be gone already (`... | tee log` ended by the same Ctrl-C)
            print("\n[服务] 已停止（Ctrl-C）。", file=sys.stderr, flush=True)
        return serving.INTERRUPTED


def serve_until_stopped(inv: Invocation, record) -> int:
    """The HTTP API and chat page; with the openai backend a remote engine generates and no weights load here."""
    srv = inv.server
    rt = runtime.open_runtime(inv.model, inv.generation, inv.conversation, inv.safety, record, weights=not srv.remote)
    announce(rt)
    config = serving.ServeConfig(
        model_name=srv.served_model_name, system=rt.system, history_turns=inv.conversation.history_turns,
        settings=rt.generation, max_tokens_cap=rt.generation.max_new_tokens, max_body_bytes=srv.max_body_bytes,
        api_key=srv.api_key, max_concurrency=srv.max_concurrency, disclaimer=DISCLAIMER,
        help_in_content=srv.help_in_content, cors_origins=list(srv.cors_origins), max_queue=srv.max_queue,
        queue_timeout=srv.queue_timeout)
    if srv.remote:
        backend = serving.OpenAIBackend(srv.backend_url, srv.backend_model, srv.backend_api_key, rt.tokenizer,
                                        rt.context_limit)
        print(f"[服务] 生成交给 {srv.backend_url}（模型 {srv.backend_model}），本进程负责安全层")
    else:  # the model's lock: a guard on this same model (--safety_model base) holds it too
        backend = serving.HFBackend(rt.model, rt.tokenizer, rt.context_limit, lock=rt.loaded.lock)
    if srv.host not in serving.LOCAL_HOSTS and not srv.api_key:
        print(f"[警告] 服务监听 {srv.host}，局域网/公网上的任何人都能访问，而且没有设置 API key（--api_key 或环境变量 PSYDT_API_KEY）。")

    def bound(port):  # the port bound (--port 0 picks a free one)
        print(f"[服务] 对话页面 http://{srv.host}:{port}/ ；OpenAI 兼容接口 http://{srv.host}:{port}/v1"
              f"（模型名 {config.model_name}，最多同时处理 {config.max_concurrency} 个请求，另有 {config.max_queue} 个排队位置）。"
              "按 Ctrl-C 停止。", flush=True)

    serving.serve(serving.create_app(backend, rt.safety, config), srv.host, srv.port, bound)
    return 0


def run_export_program(inv: Invocation, record) -> int:
    rt = runtime.open_runtime(inv.model, inv.generation, inv.conversation, inv.safety, record)
    return run_export(inv.export, rt.model, rt.tokenizer, rt.record, inv.model.model_path, rt.adapter, rt.system,
                      rt.generation)


def run_safety_eval(inv: Invocation) -> int:
    """Counts, recall and false alarms of each safety layer and of any of them on a file of texts; the last
    line is JSON. Loads the guard of --safety_model (the base model too for `base`); a layer that cannot
    run is named, with why."""
    spec = inv.safety.guard
    cases = read_eval_cases(inv.eval_file)
    layers, missing, guard, check = {"lexicon": lexicon_layer()}, {}, None, None
    if spec != "none":
        loaded = (runtime.load_model(inv.model, None, inv.generation.enable_thinking) if spec == "base"
                  else runtime.Loaded(None, None, pick_device(inv.model.device), None))
        choice = load_guard(spec, inv.model.hub, loaded.model, loaded.tokenizer, loaded.device, lock=loaded.lock)
        guard, check = choice.guard or choice.rejected, choice.check  # one the start-up check switches off: measured too
        if guard is None:
            missing[spec] = choice.why
        else:
            layers[guard.name] = guard_layer(guard)
    print(f"[安全评估] 评估的层：{'、'.join(layers)}" + (f"；没能运行：{'、'.join(f'{k}（{v}）' for k, v in missing.items())}"
                                                 if missing else ""), flush=True)
    if check is not None:  # the same figures the start line of chat, test and serve gives
        print(f"[安全评估] 启动检查{'通过（对话和服务中会启用这一层）' if check.passed else '没通过（对话和服务中会关闭这一层）'}："
              f"{check.figures()}")
    results = evaluate_layers(cases, layers, progress=(lambda it, desc: tqdm(it, desc=desc, leave=False)) if guard else None)
    print("\n".join(report_lines(results)))
    if guard is not None:
        print(f"[安全评估] 审核模型平均 {guard.ms_per_call():.0f} ms/次，格式不符 {guard.malformed} 次")
    print(json.dumps({"file": str(inv.eval_file), "layers": list(layers), "not_run": missing, "results": results,
                      "startup_check": check.as_dict() if check else None}, ensure_ascii=False))
    return 0


PROGRAMS = {"chat": run_chat, "test": run_batch_test, "serve": run_serve, "export": run_export_program}


def cli() -> int:
    """The `psydt-chat` console command and `python LLM_fine_turning/inference_psydt_lora.py`."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
