"""Judge the counsellor as the field does: generation and judging through any OpenAI-compatible endpoint.

    # replies from vLLM (base model + adapter served with --enable-lora) on CPsyCounE, turn by turn
    psydt-judge generate --eval_set cpsycoune --gen_url http://127.0.0.1:8000/v1 --gen_model psydt \
        --gen_base_model Qwen/Qwen3-1.7B --output ./output/psydt_judge/cpsycoune.json

    # rubric scores (CPsyCounE's four dimensions), pairwise LoRA vs base, the crisis check
    psydt-judge rubric --results ./output/psydt_judge/cpsycoune.json --judge_url URL --judge_model NAME
    psydt-judge pairwise --a ./output/psydt_judge/cpsycoune.json --judge_url URL --judge_model NAME
    psydt-judge crisis --results ./output/psydt_judge/crisis.json --judge_url URL --judge_model NAME

    # preference pairs for DPO from those verdicts (several samples per item: generate --samples_per_item 4)
    psydt-judge pairs --out_dir ./output/psydt_judge        # -> ./output/psydt_judge/pairs.jsonl

Every command writes its JSON into --out_dir and rebuilds the report there (report.md + report.png);
answers are cached in <out_dir>/cache.sqlite, so a rerun sends nothing and a killed run resumes.
Exit codes: 0 done (some requests may have failed: counted by kind, a rerun fills them in); 2 bad input;
3 every request to one of the servers failed (nothing listening, wrong port...); 130 Ctrl-C (the answers
so far are in the cache).
The script LLM_fine_turning/judge_psydt_lora.py calls this module.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from psydt_lora.cli import HelpFormatter, make_parser
from psydt_lora.data.datasets import as_turn_items
from psydt_lora.data.dialogues import check_format, read_dialogues, select_spread
from psydt_lora.errors import PsyDTError, run_cli
from psydt_lora.files import atomic_write_json, check_can_write, json_problem
from psydt_lora.judge import cpsycoune
from psydt_lora.judge.crisis import CRISIS_SET, crisis_only, load_set, screen_sides
from psydt_lora.judge.endpoint import Cache, Endpoint, EndpointConfig, describe_failures
from psydt_lora.judge.generate import generate
from psydt_lora.judge.pairwise import judge_pairs, load_prompt, summarize_verdicts
from psydt_lora.judge.preferences import DEFAULT_MIN_MARGIN, SOURCES, build_pairs, judged_files, write_pairs
from psydt_lora.judge.profiles import SHIPPED, load_profiles, pick_spread, replay_profiles, shipped_profiles
from psydt_lora.judge.report import STATUS_NAMES, write_judge_report
from psydt_lora.judge.rubric import judge_sides, load_rubric, sides_of, summarize_scores
from psydt_lora.judge.simulation import Counsellor, simulate
from psydt_lora.prompt import DEFAULT_SYSTEM
from psydt_lora.safety.session import Safety

SIDE_FIELDS = {"base": "base_response", "response": "response"}
EXIT_ALL_FAILED = 3  # every request to one server failed: nothing to judge by
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a command; args[0]: the cache that holds the answers so far."""


def add_endpoint(p, who: str, name: str, required: bool = True) -> None:
    g = p.add_argument_group(f"{name}（OpenAI 兼容接口）")
    g.add_argument(f"--{who}_url", required=required, help="接口地址，例如 http://127.0.0.1:8000/v1")
    g.add_argument(f"--{who}_model", required=required, help="请求的模型名")
    g.add_argument(f"--{who}_api_key", default=None,
                   help=f"API key；更安全的做法是设置环境变量 PSYDT_{who.upper()}_API_KEY（不会写进任何文件或日志）")
    g.add_argument(f"--{who}_concurrency", type=int, default=8, help="同时发出的请求数")
    g.add_argument(f"--{who}_timeout", type=float, default=120.0, help="单个请求的超时（秒）")
    g.add_argument(f"--{who}_retries", type=int, default=5, help="遇到 429 / 5xx / 超时后最多重试几次（指数退避）")
    g.add_argument(f"--{who}_max_tokens", type=int, default={"gen": 512, "client": 256}.get(who, 64), help="每次回答最多的 token 数")
    g.add_argument(f"--{who}_extra_body", default='{"chat_template_kwargs": {"enable_thinking": false}}',
                   help="原样加进请求体的 JSON（vLLM/SGLang 用它关闭 Qwen3 的思考；托管 API 请设为 '{}'）")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("用 LLM 评审（rubric / 两两比较 / 危机回应检查）评估心理咨询模型；生成与评审都走 OpenAI 兼容接口。")
    sub = p.add_subparsers(dest="command", required=True, title="命令", metavar="{generate,rubric,pairwise,crisis,pairs,simulate,report}")

    def command(name, text):
        c = sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter, usage="%(prog)s [选项]",
                           add_help=False)
        c._optionals.title = "其他选项"
        c.add_argument("-h", "--help", action="help", help="显示本帮助并退出")
        c.add_argument("--out_dir", default="./output/psydt_judge", help="评审结果、缓存和报告所在的文件夹")
        c.add_argument("--cache", default=None, help="应答缓存（SQLite）；默认 <out_dir>/cache.sqlite")
        c.add_argument("--no_progress", action="store_true", help="不显示进度条")
        return c

    c = command("generate", "通过接口为测试集生成回复（LoRA，可选再加基础模型），写成批量测试结果文件")
    c.add_argument("--eval_set", choices=("psydt", "cpsycoune", "crisis", "dialogues"), default="psydt",
                   help="测试集；dialogues：--test_file 是整段多轮对话（如训练文件），每条咨询师回复一个条目——"
                        "为偏好训练在训练对话上生成候选回复时用它（不要在测试集上做偏好训练）")
    c.add_argument("--test_file", default=None, help="psydt：单轮拆分格式的测试文件")
    c.add_argument("--max_test_items", type=int, default=0, help="从不同对话中均匀取 N 条；0 = 全部")
    c.add_argument("--cpsycoune_dir", default=None, help="cpsycoune：本地 CPsyCounE 文件夹；不给时下载到 <out_dir>/CPsyCounE")
    c.add_argument("--system_prompt", default=None, help="系统提示词（默认：psydt 用每条自带的，其他用推理脚本的默认值）")
    c.add_argument("--output", default=None, help="结果文件；默认 <out_dir>/<eval_set>.json")
    c.add_argument("--gen_base_model", default=None, help="基础模型名：每条再生成一次，写进 base_response")
    c.add_argument("--gen_base_url", default=None, help="基础模型在另一个接口上时的地址（默认同 --gen_url）")
    c.add_argument("--temperature", type=float, default=0.7, help="采样温度（0 = 贪心）")
    c.add_argument("--top_p", type=float, default=0.8, help="nucleus 采样阈值")
    c.add_argument("--seed", type=int, default=None, help="请求里带上的随机种子（vLLM 支持）")
    c.add_argument("--samples_per_item", type=int, default=1,
                   help="每条生成几个样本（> 1 时需 --temperature > 0；第 k 个样本的 seed 是 --seed + k，不给 --seed 时从 0 起，"
                        "每个样本单独缓存）；评分表给每个样本打分，pairs 命令用最好对最差组成偏好对")
    add_endpoint(c, "gen", "生成模型")

    c = command("rubric", "给结果文件里每条回复按评分表打分")
    c.add_argument("--results", action="append", required=True, help="批量测试结果文件（可重复）")
    c.add_argument("--rubric", default="cpsycoune", help="评分表：cpsycoune、psydt、crisis，或评分表 JSON 文件")
    c.add_argument("--with_reference", action="store_true", help="把参考回复也给评审模型看")
    add_endpoint(c, "judge", "评审模型")

    c = command("pairwise", "两两比较：每条按 A/B 和 B/A 两种顺序各问一次，两次一致才算胜负")
    c.add_argument("--a", required=True, help="结果文件；加 :base 表示其中的 base_response")
    c.add_argument("--b", default=None, help="另一份结果文件（同上）；不给时用 --a 文件里的 base_response")
    add_endpoint(c, "judge", "评审模型")

    c = command("crisis", "危机回应检查：回复过滤层的判断 + 危机评分表（基础模型与 LoRA 并排）")
    c.add_argument("--results", required=True, help="`generate --eval_set crisis` 写出的结果文件")
    add_endpoint(c, "judge", "评审模型", required=False)


    c = command("pairs", "从评审结果写出偏好对（DPO 等偏好训练用）：两两比较两种顺序一致的胜负、评分表的最好对最差、回复过滤层")
    c.add_argument("--judged", action="append", default=None,
                   help="评审结果文件（rubric-*.json、pairwise-*.json、crisis-check.json，可重复）；默认 --out_dir 里的全部")
    c.add_argument("--min_margin", type=float, default=DEFAULT_MIN_MARGIN,
                   help="评分表：最好和最差的回复总分至少差这么多才组成一对（必须 > 0，分数相同算平局，跳过）")
    c.add_argument("--output", default=None, help="偏好对文件（TRL 对话格式的 JSONL）；默认 <out_dir>/pairs.jsonl")

    simulate_options(command("simulate", "整段会谈：模拟来访者与咨询师多轮对话，再由评审模型给整场会谈打分（危机设定另评危机回应）"))
    command("report", "只根据 --out_dir 里已有的评审结果重写报告")
    return p


def simulate_options(c) -> None:
    c.add_argument("--profiles", default=None, help="来访者设定 JSON 文件（列表：id、profile，可选 attitude、risk、opening）；默认内置的 69 个")
    c.add_argument("--replay_file", default=None, help="PsyDTCorpus 格式的对话文件：每段对话里来访者自己的话做成一个回放设定")
    c.add_argument("--max_profiles", type=int, default=0, help="均匀取 N 个设定；0 = 全部")
    c.add_argument("--max_turns", type=int, default=20, help="每场会谈最多几轮（一轮 = 来访者一句 + 咨询师一句）")
    c.add_argument("--sessions_per_profile", type=int, default=1, help="每个设定谈几场（来访者的种子各不相同）")
    c.add_argument("--client_seed", type=int, default=0, help="来访者种子的起点；每个设定的种子由它和设定 id 决定，两位咨询师遇到同一个来访者")
    c.add_argument("--client_temperature", type=float, default=0.7, help="来访者模型的采样温度")
    c.add_argument("--label", default=None, help="咨询师在报告里的名字；默认 --gen_model")
    c.add_argument("--system_prompt", default=None, help="咨询师的系统提示词（默认推理脚本的默认值；\"\" 表示不发系统提示词，由咨询师的服务用它自己的默认值）")
    c.add_argument("--temperature", type=float, default=0.7, help="咨询师的采样温度（0 = 贪心）")
    c.add_argument("--top_p", type=float, default=0.8, help="咨询师的 nucleus 采样阈值")
    c.add_argument("--seed", type=int, default=None, help="咨询师请求里带上的随机种子（vLLM 支持）")
    c.add_argument("--gen_base_model", default=None, help="第二位咨询师（例如基础模型）：同样的设定和来访者种子再谈一遍，并做整场两两比较")
    c.add_argument("--gen_base_url", default=None, help="第二位咨询师在另一个接口上时的地址（默认同 --gen_url）")
    c.add_argument("--rubric", default="session", help="整场会谈的评分表：session，或同样形状的评分表 JSON 文件")
    add_endpoint(c, "gen", "咨询师模型")
    add_endpoint(c, "client", "来访者模型")
    add_endpoint(c, "judge", "评审模型（不给则只写会谈记录）", required=False)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out_dir)

    check_can_write(out_dir, "--out_dir")
    run = {"generate": run_generate, "rubric": run_rubric, "pairwise": run_pairwise, "crisis": run_crisis,
           "simulate": run_simulate}
    if args.command == "pairs":  # reads the judged files, writes the pair file: the report stays as it is
        run_pairs(args, out_dir)
        return 0
    try:
        endpoints = run[args.command](args, out_dir) if args.command in run else []
    except KeyboardInterrupt:
        raise Interrupted(Path(args.cache or out_dir / "cache.sqlite")) from None

    md, png = write_judge_report(out_dir)
    print(f"[报告] {md}" + (f"，图表 {png}" if png else ""))
    return all_failed(endpoints)


def all_failed(endpoints) -> int:
    """EXIT_ALL_FAILED, with a message naming each server whose every request failed; else 0."""
    dead = {(ep.config.url, ep.config.model): ep for ep in endpoints if ep.usage.all_failed()}
    for (url, model), ep in dead.items():
        say(f"错误：{url}（模型 {model!r}）的 {ep.usage.failed} 个请求全部失败（{describe_failures(ep.usage.failures)}）。"
            "检查服务是否在运行、地址和端口是否正确；结果里这些条目记为“请求失败”（不是评审的回答），服务好了以后重跑同一命令会补上。")
    return EXIT_ALL_FAILED if dead else 0


def say(text: str) -> None:
    """A line on stderr that never raises: under `| tee log` a Ctrl-C ends tee too, and the pipe is gone."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass


def endpoint(args, who: str, cache, url=None, model=None, **sampling):
    try:
        extra = json.loads(getattr(args, f"{who}_extra_body"))
    except json.JSONDecodeError as err:
        raise PsyDTError(f"--{who}_extra_body 不是合法的 JSON（{json_problem(err, line=False)}）。") from None
    for name in ("concurrency", "max_tokens"):
        if getattr(args, f"{who}_{name}") <= 0:
            raise PsyDTError(f"--{who}_{name} 必须是正数。")
    key = getattr(args, f"{who}_api_key") or os.environ.get(f"PSYDT_{who.upper()}_API_KEY")
    config = EndpointConfig(url or getattr(args, f"{who}_url"), model or getattr(args, f"{who}_model"), key,
                            concurrency=getattr(args, f"{who}_concurrency"), timeout=getattr(args, f"{who}_timeout"),
                            retries=getattr(args, f"{who}_retries"), max_tokens=getattr(args, f"{who}_max_tokens"),
                            extra_body=extra, **sampling)
    ep = Endpoint(config, cache)
    ep.check_model()  # a model the server does not list is refused now, not after a whole pass
    limit = ep.fit_server()
    if limit is not None:
        print(f"[接口] {config.url} 说它同时处理 {limit} 个请求（GET /healthz）：发给它的请求最多 {limit} 个同时进行"
              f"（--{who}_concurrency {config.concurrency}）")
    return ep


def open_cache(args, out_dir):
    return Cache(args.cache or out_dir / "cache.sqlite")


def report_usage(name: str, ep) -> None:
    print(f"[{name}] {ep.config.model}：{ep.usage.describe()}")


def run_generate(args, out_dir) -> list:
    items, source = eval_items(args, out_dir)
    system = args.system_prompt if args.system_prompt is not None else (None if args.eval_set in ("psydt", "dialogues") else DEFAULT_SYSTEM)
    output = Path(args.output or out_dir / f"{args.eval_set}.json")
    print(f"[生成] {args.eval_set}：{len(items)} 条（来自 {source}）")
    cache = open_cache(args, out_dir)
    samples = []
    for seed in sample_seeds(args):
        sampling = {"temperature": args.temperature, "top_p": args.top_p if args.temperature > 0 else None, "seed": seed}
        endpoints = {"response": endpoint(args, "gen", cache, **sampling)}
        if args.gen_base_model:
            endpoints["base_response"] = endpoint(args, "gen", cache, url=args.gen_base_url, model=args.gen_base_model,
                                                  **sampling)
        samples.append(endpoints)
    meta = {"eval_set": args.eval_set, "test_file": source, "label": "lora" if args.gen_base_model else args.gen_model,
            "model": args.gen_base_model, "adapter": args.gen_model if args.gen_base_model else None,
            "system_prompt": "override" if system else "from each item"}
    report = generate(items, samples, output, meta, system_override=system, progress=not args.no_progress)
    for ep in (ep for endpoints in samples for ep in endpoints.values()):
        report_usage("生成", ep)
    failed = sum(report["meta"]["failed"].values())
    each = f"，每条 {len(samples)} 个样本" if len(samples) > 1 else ""
    print(f"[完成] {len(items)} 条{each}写入 {output}" + (f"；{failed} 条请求失败（重跑同一命令会补上）" if failed else ""))
    return [ep for endpoints in samples for ep in endpoints.values()]


def sample_seeds(args) -> list:
    """One seed per sample: --seed alone for one sample; --seed + k (from 0 without --seed) for several,
    which must be sampled (temperature above 0) to differ."""
    n = args.samples_per_item
    if n < 1:
        raise PsyDTError("--samples_per_item 至少是 1。")
    if n == 1:
        return [args.seed]
    if args.temperature <= 0:
        raise PsyDTError(f"--samples_per_item {n} 需要采样：请把 --temperature 设为大于 0 的值（贪心解码的 {n} 个样本完全一样）。")
    return [(args.seed or 0) + k for k in range(n)]


def eval_items(args, out_dir):
    """(items, where they came from) for --eval_set, checked before any request; --max_test_items spreads
    the pick over as many dialogues as possible."""

    if args.eval_set == "crisis":

        items, source = load_set(), str(CRISIS_SET)
    elif args.eval_set == "cpsycoune":

        folder = Path(args.cpsycoune_dir) if args.cpsycoune_dir else cpsycoune.fetch(out_dir / "CPsyCounE")
        dialogues = cpsycoune.load_dialogues(folder)
        items, source = cpsycoune.turn_items(dialogues), str(folder)
        print(f"[CPsyCounE] {len(dialogues)} 段对话，{len(items)} 个逐轮测试条目")
    elif args.eval_set == "dialogues":
        if not args.test_file:
            raise PsyDTError("--eval_set dialogues 需要 --test_file（整段多轮对话的文件，例如 PsyDTCorpus 的训练文件）。")
        dialogues, _ = read_dialogues(args.test_file)
        check_format(dialogues, args.test_file, expect_split=False, flag="--test_file")
        items, source = as_turn_items(dialogues), str(args.test_file)
        print(f"[对话] {len(dialogues)} 段对话，{len(items)} 个逐条回复的条目")
    else:
        if not args.test_file:
            raise PsyDTError("--eval_set psydt 需要 --test_file（PsyDTCorpus 的单轮拆分测试文件）。")
        items, _ = read_dialogues(args.test_file)
        check_format(items, args.test_file, expect_split=True, flag="--test_file")
        source = str(args.test_file)
    return select_spread(items, args.max_test_items), source


def run_rubric(args, out_dir) -> list:
    rubric = load_rubric(args.rubric)
    sides = unique_labels([s for path in args.results for s in sides_of(path)])
    judge = endpoint(args, "judge", open_cache(args, out_dir))
    verdicts = judge_sides(sides, rubric, judge, args.with_reference, progress=not args.no_progress)
    summary = summarize_scores(verdicts, rubric)
    write_judged(out_dir / f"rubric-{rubric.id}.json", judge, verdicts, summary, rubric=rubric_info(rubric),
                 with_reference=args.with_reference, sources=[s.path for s in sides], sides=[s.label for s in sides],
                 fields=[s.field for s in sides])
    report_usage("评审", judge)
    for side, s in summary.items():
        print(f"[评审] {side}：{verdict_counts(s)}")
    return [judge]


def verdict_counts(summary: dict) -> str:
    """`有效 5，无法解析 1，…，请求失败 6（连接失败 6）`: the judge's answers apart from the requests that failed."""
    text = "，".join(f"{STATUS_NAMES[k]} {n}" for k, n in summary["counts"].items())
    return text + (f"（{describe_failures(summary['failures'])}）" if summary.get("failures") else "")


def run_pairwise(args, out_dir) -> list:
    a = pick_side(args.a)
    b = pick_side(args.b) if args.b else next((s for s in sides_of(args.a) if s.field == "base_response"), None)
    if b is None:
        raise PsyDTError(f"{args.a} 里没有 base_response：请用 --b 指定另一份结果文件。")
    a, b = unique_labels([a, b])
    prompt = load_prompt()
    judge = endpoint(args, "judge", open_cache(args, out_dir))
    outcomes = judge_pairs(a, b, judge, prompt, progress=not args.no_progress)
    summary = summarize_verdicts(outcomes)
    write_judged(out_dir / f"pairwise-{a.label}-vs-{b.label}.json", judge, outcomes, summary,
                 a={"label": a.label, "path": a.path, "field": a.field}, b={"label": b.label, "path": b.path, "field": b.field},
                 prompt={"id": prompt["id"], "version": prompt["version"]})
    report_usage("评审", judge)
    c = summary["counts"]
    lost = f"（{describe_failures(summary['failures'])}）" if summary["failures"] else ""
    print(f"[两两比较] {a.label} 对 {b.label}：胜 {c['win']}，平 {c['tie']}，负 {c['loss']}，无效 {c['invalid']}，"
          f"请求失败 {c['failed']}{lost}")
    return [judge]


def run_crisis(args, out_dir) -> list:
    sides = sides_of(args.results)
    screen = screen_sides(Safety(), sides)
    result = {"meta": {"sources": [args.results], "sides": [s.label for s in sides]}, "screen": screen}
    if args.judge_url:
        rubric = load_rubric("crisis")
        judge = endpoint(args, "judge", open_cache(args, out_dir))
        verdicts = judge_sides(crisis_only(sides), rubric, judge, progress=not args.no_progress)
        result.update(items=verdicts, summary=summarize_scores(verdicts, rubric))
        result["meta"].update(judge=judge.config.describe(), usage=vars(judge.usage), rubric=rubric_info(rubric))
        report_usage("评审", judge)
        for side, s in result["summary"].items():
            print(f"[危机评分] {side}：{verdict_counts(s)}")
    else:
        judge = None
        print("[危机检查] 没有给 --judge_url：只报告回复过滤层的判断。")

    atomic_write_json(out_dir / "crisis-check.json", result)
    for side, groups in screen.items():
        g = groups["crisis"]
        print(f"[危机检查] {side}：危机对话 {g['items']} 条，来访者一轮被识别 {g['turn_flagged']} 条，回复被拦截 {g['reply_blocked']} 条")
    return [judge] if judge else []


def run_pairs(args, out_dir) -> None:
    paths = args.judged or judged_files(out_dir)
    if not paths:
        raise PsyDTError(f"{out_dir} 里没有评审结果：先运行 rubric / pairwise，或用 --judged 指定评审结果文件。")
    output = Path(args.output or out_dir / "pairs.jsonl")
    check_can_write(output, "--output")
    pairs, tally = build_pairs(paths, Safety(), args.min_margin)
    write_pairs(output, pairs)
    counts = "，".join(f"{source} {tally.pairs[source]}" for source in SOURCES)
    print(f"[偏好对] {len(pairs)} 对写入 {output}（来自 {len(paths)} 个评审结果文件；{counts}）")
    for reason, n in sorted(tally.skipped.items()):
        print(f"[跳过] {reason}：{n} 条")


def run_simulate(args, out_dir) -> list:
    if args.max_turns < 1 or args.sessions_per_profile < 1:
        raise PsyDTError("--max_turns 和 --sessions_per_profile 至少是 1。")
    profiles, source = simulate_profiles(args)
    cache = open_cache(args, out_dir)
    sampling = {"temperature": args.temperature, "top_p": args.top_p if args.temperature > 0 else None, "seed": args.seed}
    counsellors = [Counsellor(args.label or args.gen_model, endpoint(args, "gen", cache, **sampling),
                              endpoint(args, "client", cache, temperature=args.client_temperature))]
    if args.gen_base_model:
        counsellors.append(Counsellor(args.gen_base_model, endpoint(args, "gen", cache, url=args.gen_base_url,
                                                                    model=args.gen_base_model, **sampling),
                                      endpoint(args, "client", cache, temperature=args.client_temperature)))
    judge = endpoint(args, "judge", cache) if args.judge_url else None
    print(f"[会谈] {len(profiles)} 个设定（{source}）× {args.sessions_per_profile} 场，最多 {args.max_turns} 轮")
    results = simulate(profiles, counsellors, judge, out_dir, Safety(), rubric=args.rubric, source=source,
                       system=DEFAULT_SYSTEM if args.system_prompt is None else args.system_prompt or None,
                       max_turns=args.max_turns,
                       repeats=args.sessions_per_profile, base_seed=args.client_seed, progress=not args.no_progress)
    for c in counsellors:
        report_usage("来访者", c.client)
        report_usage("咨询师", c.endpoint)
    if judge is not None:
        report_usage("评审", judge)
    for line in results:
        print(line)
    return [ep for c in counsellors for ep in (c.endpoint, c.client)] + ([judge] if judge else [])


def simulate_profiles(args):
    """(profiles, where they came from): the user's file, replayed dialogues, or the shipped set; --max_profiles
    spreads the pick over the list."""

    profiles, sources = [], []
    if args.profiles:
        profiles += load_profiles(args.profiles)
        sources.append(str(args.profiles))
    if args.replay_file:
        profiles += replay_profiles(args.replay_file)
        sources.append(f"回放 {args.replay_file}")
    if not profiles:
        profiles, sources = shipped_profiles(), [f"内置 {SHIPPED.name}"]
    profiles = pick_spread(profiles, args.max_profiles)
    if len({p.id for p in profiles}) != len(profiles):
        raise PsyDTError("来访者设定的 id 有重复（--profiles 与 --replay_file 之间）：请改掉重复的 id。")
    return profiles, "；".join(sources)


def pick_side(spec: str):
    path, _, which = spec.rpartition(":")
    if which not in SIDE_FIELDS or not path:
        path, which = spec, "response"
    sides = {s.field: s for s in sides_of(path)}
    if SIDE_FIELDS[which] not in sides:
        raise PsyDTError(f"{path} 里没有 {SIDE_FIELDS[which]}。")
    return sides[SIDE_FIELDS[which]]


def unique_labels(sides):
    """Two sides with the same label (two runs of one model) are told apart by their file names."""
    from dataclasses import replace

    seen = [s.label for s in sides]
    return [replace(s, label=f"{s.label}@{Path(s.path).stem}") if seen.count(s.label) > 1 else s for s in sides]


def rubric_info(rubric) -> dict:
    return rubric.info()


def write_judged(path, judge, items, summary, **meta) -> None:
    atomic_write_json(path, {"meta": {**meta, "judge": judge.config.describe(), "usage": vars(judge.usage)},
                             "items": items, "summary": summary})


def cli() -> int:
    """The `psydt-judge` console command and `python LLM_fine_turning/judge_psydt_lora.py`. Ctrl-C: one line,
    no traceback, exit 130; the process ends at once (os._exit) rather than wait up to --*_timeout for the
    requests in flight -- every answer that arrived is already committed to the cache."""
    try:
        return run_cli(main)
    except KeyboardInterrupt as stop:
        where = f" {stop.args[0]} " if stop.args else "缓存"
        say(f"\n[中断] 收到 Ctrl-C：已经得到的回答都在{where}里，重跑同一命令只补剩下的。")
        try:
            sys.stdout.flush()
        except (BrokenPipeError, OSError):
            pass
        os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(cli())
