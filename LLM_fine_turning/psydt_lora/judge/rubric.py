"""The rubric judge: a judge model scores every reply of a results file on a rubric read from a data file.

A rubric (judge/rubrics/<id>.json, or any file of that shape) names its dimensions with their integer
ranges; the judge answers with exactly one list of integers, `[2, 3, 3, 1]`, nothing else. An answer that
is not exactly that is counted -- unparseable, out of range, refused, empty, or failed (no answer after
the retries: the request's failure, by kind, in `error` and the summary's `failures`) -- never guessed and
never dropped: every verdict keeps the judge's raw answer.

Scores are averaged per dialogue, then over dialogues (the CPsyCounE protocol), with 95 % bootstrap
intervals over dialogues, overall and per topic.
"""
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import read_json
from psydt_lora.prompt import strip_think
from psydt_lora.judge.endpoint import Answer, failure_counts
from psydt_lora.judge.stats import mean_ci

RUBRICS = Path(__file__).resolve().parent / "rubrics"
STATUSES = ("ok", "unparseable", "out_of_range", "refused", "empty", "failed")
ROLE_NAMES = {"user": "来访者", "assistant": "咨询师"}
_ANSWER = re.compile(r"\[\s*(-?\d+(?:\s*[,，]\s*-?\d+)*)\s*\]")
_REFUSAL = re.compile(r"抱歉|无法(回答|评分|评价|提供)|不能(回答|评分|评价)|sorry|I can(?:no|')t|I'm unable|as an AI", re.I)

DEFAULT_TEMPLATE = (
    "下面是一段心理咨询对话的历史，以及咨询师针对来访者最后一句话给出的回复。请按评分标准给这条回复打分。\n\n"
    "【对话历史】\n{history}\n\n【咨询师的回复】\n{reply}\n{reference}\n"
    "【评分标准】\n{dimensions}\n\n"
    "【回答格式】只回答一个方括号列表，按上面的顺序给出 {count} 个整数，例如 {example}。不要写理由，不要写任何其他文字。"
)
REFERENCE_BLOCK = "\n【参考回复】（真实咨询师当时的回复，仅供参考，好的回复不必与它用词相同）\n{reference}\n"


@dataclass
class Dimension:
    key: str
    name: str
    min: int
    max: int
    description: str


@dataclass
class Rubric:
    id: str
    version: int
    name: str
    system: str
    dimensions: list[Dimension]
    template: str = DEFAULT_TEMPLATE
    about: str = ""
    path: str = ""
    keys: list[str] = field(init=False)

    def __post_init__(self):
        self.keys = [d.key for d in self.dimensions]

    @property
    def purpose(self) -> str:
        """The rubric's part of the cache key."""
        return f"rubric:{self.id}@{self.version}"

    def info(self) -> dict:
        """What a judged file records of its rubric."""
        return {"id": self.id, "version": self.version, "name": self.name, "path": self.path,
                "dimensions": [vars(d) for d in self.dimensions]}

    def messages(self, history: list[dict], reply: str, reference: str | None = None) -> list[dict]:
        dims = "\n".join(f"{i}. {d.name}（{d.min}–{d.max} 分）：{d.description}" for i, d in enumerate(self.dimensions, 1))
        example = "[" + ", ".join(str(d.max) if i % 2 else str(d.min) for i, d in enumerate(self.dimensions)) + "]"
        text = self.template.format(
            history=format_history(history), reply=reply or "（空回复）", dimensions=dims, count=len(self.dimensions),
            example=example, reference=REFERENCE_BLOCK.format(reference=reference) if reference else "")
        return [{"role": "system", "content": self.system}, {"role": "user", "content": text}]

    def parse(self, text: str | None, finish_reason: str | None = None) -> tuple[str, dict | None]:
        """(status, scores): scores only when the answer is exactly a list of in-range integers."""
        body = strip_think(text or "")
        match = _ANSWER.fullmatch(body)
        if match is None:
            if finish_reason == "content_filter" or _REFUSAL.search(body):
                return "refused", None
            return ("unparseable" if body.strip() else "empty"), None
        numbers = [int(x) for x in re.split(r"\s*[,，]\s*", match.group(1))]
        if len(numbers) != len(self.dimensions):
            return "unparseable", None
        if any(not d.min <= n <= d.max for d, n in zip(self.dimensions, numbers)):
            return "out_of_range", None
        return "ok", dict(zip(self.keys, numbers))


def format_history(messages: list[dict]) -> str:
    return "\n".join(f"{ROLE_NAMES.get(m['role'], m['role'])}：{m['content']}" for m in messages if m["role"] != "system")


def load_rubric(name_or_path) -> Rubric:
    """A built-in rubric by id (cpsycoune, psydt, crisis) or a rubric file of the same shape."""
    path = Path(name_or_path)
    if not path.suffix and (RUBRICS / f"{name_or_path}.json").is_file():
        path = RUBRICS / f"{name_or_path}.json"
    data = read_json(path, "评分表文件")
    where = f"评分表文件 {path}"
    for key, kind in (("id", str), ("version", int), ("name", str), ("system", str), ("dimensions", list)):
        if not isinstance(data.get(key), kind):
            raise PsyDTError(f"{where} 缺少字段 {key!r}，或它的类型不是 {kind.__name__}。")
    dims = []
    for i, d in enumerate(data["dimensions"]):
        ok = isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("key", "name", "description")) \
            and all(isinstance(d.get(k), int) for k in ("min", "max")) and d["min"] < d["max"]
        if not ok:
            raise PsyDTError(f"{where} 的 dimensions[{i}] 需要 key、name、description（文字）和 min < max（整数）。")
        dims.append(Dimension(d["key"], d["name"], d["min"], d["max"], d["description"]))
    if not dims or len({d.key for d in dims}) != len(dims):
        raise PsyDTError(f"{where} 的 dimensions 不能为空，key 不能重复。")
    template = data.get("template", DEFAULT_TEMPLATE)
    for slot in ("{history}", "{reply}", "{dimensions}"):
        if slot not in template:
            raise PsyDTError(f"{where} 的 template 缺少占位符 {slot}。")
    return Rubric(data["id"], data["version"], data["name"], data["system"], dims, template, data.get("about", ""),
                  str(path))


# -- results files -----------------------------------------------------------------------------------
@dataclass
class Side:
    """One model's replies: a results file and the field that holds them."""
    label: str
    path: str
    field: str  # "response" or "base_response"
    results: list[dict]


def read_results(path) -> dict:
    """A batch-test results file (from --mode test or `psydt-judge generate`), checked."""
    data = read_json(path, "结果文件")
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise PsyDTError(f"结果文件 {path} 应是批量测试写出的 JSON（含 results 列表）。")
    for i, r in enumerate(data["results"]):
        if not isinstance(r, dict) or not isinstance(r.get("response"), (str, type(None))):
            raise PsyDTError(f"结果文件 {path} 第 {i + 1} 条缺少 response 字段（文字）。")
        if not (isinstance(r.get("context"), list) or isinstance(r.get("history_tail"), list)):
            raise PsyDTError(f"结果文件 {path} 第 {i + 1} 条缺少 context（对话历史）。")
    return data


def sides_of(path, label: str | None = None) -> list[Side]:
    """The replies a results file holds: `response` (the LoRA model, or the file's label) and, when the
    batch test ran with --compare_base, `base_response`."""
    data = read_results(path)
    meta, results = data.get("meta", {}), data["results"]
    main = label or meta.get("label") or ("lora" if meta.get("adapter") else "base")
    sides = [Side(main, str(path), "response", results)]
    if any("base_response" in r for r in results):
        sides.append(Side(meta.get("base_label") or "base", str(path), "base_response", results))
    return sides


def history(r: dict) -> list[dict]:
    """The real history the reply answers (the full context when the file has it)."""
    return r.get("context") or r.get("history_tail") or []


def item_key(r: dict) -> str:
    """An item's key; with several samples per item (`generate --samples_per_item`) one key per sample."""
    sample = f"#s{r['sample']}" if r.get("sample") is not None else ""
    return f"{r.get('index')}|{r.get('id')}{sample}"


# -- judging ---------------------------------------------------------------------------------------
def judge_sides(sides: list[Side], rubric: Rubric, endpoint, with_reference: bool = False, progress=True) -> list[dict]:
    """One verdict per (side, item), in order; the raw answer kept in each. An item whose reply is missing
    (its generation failed) is a failed verdict without asking."""
    jobs = []
    for side in sides:
        for r in side.results:
            if r.get(side.field) is None:  # generation failed for this item: nothing to judge
                continue
            reference = r.get("reference") if with_reference else None
            jobs.append((rubric.purpose, rubric.messages(history(r), r[side.field], reference)))
    if not jobs and any(side.results for side in sides):
        names = "、".join(str(side.path) for side in sides)
        raise PsyDTError(f"{names} 里没有一条可评的回复（每条的 response 都是空的：生成时请求全部失败）。"
                         "先让生成的服务跑起来、重跑 generate（已生成的会从缓存补上），再评审。")
    answers = iter(endpoint.ask_all(jobs, desc=f"评分（{rubric.name}）", progress=progress))
    verdicts = []
    for side in sides:
        for r in side.results:
            answer = next(answers) if r.get(side.field) is not None else Answer(None, error="no_reply")
            verdicts.append(_verdict(side, r, answer, rubric))
    return verdicts


def _verdict(side: Side, r: dict, answer, rubric: Rubric) -> dict:
    status, scores = ("failed", None) if answer.error else rubric.parse(answer.text, answer.finish_reason)
    return {"side": side.label, "key": item_key(r), "dialogue": str(r.get("id")),
            "topic": r.get("normalizedTag") or "（无标签）", "status": status, "scores": scores,
            "raw": answer.text, "finish_reason": answer.finish_reason, "error": answer.error}


def summarize_scores(verdicts: list[dict], rubric: Rubric) -> dict:
    """Per side: verdict counts by status, the failed requests by kind; per dimension (and the total) the
    mean of dialogue means with a 95 % interval, overall and per topic."""
    out = {}
    for side in dict.fromkeys(v["side"] for v in verdicts):
        mine = [v for v in verdicts if v["side"] == side]
        counts = {s: sum(1 for v in mine if v["status"] == s) for s in STATUSES}
        topics = sorted({v["topic"] for v in mine})
        failures = failure_counts(v["error"] for v in mine if v["status"] == "failed")
        out[side] = {"counts": counts, "failures": failures, "overall": _dimension_cis(mine, rubric),
                     "by_topic": {t: _dimension_cis([v for v in mine if v["topic"] == t], rubric) for t in topics}}
    return out


def dialogue_means(verdicts: list[dict], rubric: Rubric) -> dict:
    """{dialogue: {dimension or "total": mean over its scored items}}."""
    per = defaultdict(list)
    for v in verdicts:
        if v["status"] == "ok":
            per[v["dialogue"]].append({**v["scores"], "total": sum(v["scores"].values())})
    return {d: {k: sum(s[k] for s in rows) / len(rows) for k in [*rubric.keys, "total"]} for d, rows in per.items()}


def _dimension_cis(verdicts, rubric) -> dict:
    means = dialogue_means(verdicts, rubric)
    return {k: mean_ci([m[k] for m in means.values()]) for k in [*rubric.keys, "total"]}
