"""The second safety layer: a moderation model beside the lexicon.

`--safety_model`:
  * a Qwen3Guard-Gen checkpoint (default `Qwen/Qwen3Guard-Gen-0.6B`, fetched like the base model into
    `./Qwen/Qwen3Guard-Gen-0.6B` when missing). It is prompted exactly as its README documents -- the
    conversation as chat messages through the guard's *own* chat template ([user] to moderate a user
    turn, [user, assistant] to moderate a reply) -- and answers "Safety: Safe|Unsafe|Controversial",
    "Categories: ...", and for replies "Refusal: Yes|No", which is parsed strictly.
  * `base`: the loaded base model with the adapter switched off, asked a yes/no question and read by
    comparing the two answer tokens' logits (no sampling).
  * `none`: the lexicon alone.
When the checkpoint cannot be had (offline, a blocked hub, no disk) the loaded base model takes its place
(the `base` layer); only where no model is loaded in this process does the lexicon work alone. The hub is
probed once, briefly, before a download (hub.hub_unreachable: the endpoint and proxy variables honoured), so an
offline start does not wait for the hub client's retries.
A verdict that cannot be parsed is not a verdict: the lexicon decides that turn and a warning is logged.
Whatever model layer is chosen passes the start-up check of `guard_check` first (a few ordinary messages,
clear crises and safe replies); one that fails is switched off and the lexicon works alone.
"""
import contextlib
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from psydt_lora import hub as hubs
from psydt_lora.errors import PsyDTError
from psydt_lora.models import load_base_model, load_tokenizer, pick_dtype
from psydt_lora.prompt import prompt_ids
from psydt_lora.safety import guard_check

log = logging.getLogger("psydt_lora.safety.guard")

DEFAULT_GUARD = "Qwen/Qwen3Guard-Gen-0.6B"  # --safety_model's default
LABELS = ("Safe", "Unsafe", "Controversial")
GUARD_CATEGORIES = ("Violent", "Non-violent Illegal Acts", "Sexual Content or Sexual Acts", "PII", "Suicide & Self-Harm",
                    "Unethical Acts", "Politically Sensitive Topics", "Copyright Violation", "Jailbreak", "None")
# the guard's categories that mean a counselling crisis, in our names (harm to others is not suicide)
CRISIS_CATEGORIES = {"Suicide & Self-Harm": "suicide", "Violent": "harm_others"}
_VERDICT = re.compile(
    r"\s*Safety:\s*(?P<label>Safe|Unsafe|Controversial)\s*\n\s*Categories:\s*(?P<cats>[^\n]+?)\s*"
    r"(?:\n\s*Refusal:\s*(?P<refusal>Yes|No)\s*)?$")
HISTORY_MESSAGES = 4  # recent turns the guard sees with the user's turn


@dataclass
class Verdict:
    label: str
    categories: list = field(default_factory=list)  # the guard's names (or ours, when `ours`)
    refusal: str | None = None
    ours: bool = False

    @property
    def unsafe(self) -> bool:
        """For a reply: harmful enough to replace ("Controversial" is not)."""
        return self.label == "Unsafe"

    @property
    def crisis_categories(self) -> list:
        if self.label == "Safe":
            return []
        if self.ours:
            return sorted(self.categories)
        return sorted({CRISIS_CATEGORIES[c] for c in self.categories if c in CRISIS_CATEGORIES})


def parse_verdict(text: str) -> Verdict | None:
    """The guard's answer, or None when it is not in the documented format (every category known)."""
    m = _VERDICT.fullmatch(text.strip())
    if not m:
        return None
    cats = [c.strip() for c in m.group("cats").split(",")]
    if not cats or any(c not in GUARD_CATEGORIES for c in cats):
        return None
    return Verdict(m.group("label"), [c for c in cats if c != "None"], m.group("refusal"))


class Guard:
    """Shared bookkeeping: time per call (shown to the user) and fallbacks on malformed verdicts."""
    name = "guard"
    label = "审核模型"  # how the start line names this layer

    def __init__(self, lock=None):
        self.calls = 0
        self.seconds = 0.0
        self.malformed = 0
        self.quiet = False  # no warning on a malformed verdict (the start-up check counts them itself)
        # one check at a time (the server calls from several threads); a guard on the model that also
        # generates is given that model's lock, so it never switches the adapter off during a generation
        self.lock = lock or threading.Lock()

    def identity(self) -> dict | None:
        """What the start-up check's result is cached under (None: not cached, checked at every start)."""
        return None

    def ms_per_call(self) -> float:
        return 1000 * self.seconds / self.calls if self.calls else 0.0

    def _timed(self, fn, *args):
        with self.lock:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - start

    def check_user(self, messages: list[dict]) -> Verdict | None:
        """The last user turn, with a few turns before it."""
        convo = [m for m in messages if m["role"] in ("user", "assistant")][-HISTORY_MESSAGES:]
        while convo and convo[0]["role"] != "user":
            convo = convo[1:]
        return self._timed(self.verdict, convo)

    def check_reply(self, user_text: str, reply: str) -> Verdict | None:
        return self._timed(self.verdict, [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}])

    def verdict(self, messages) -> Verdict | None:
        verdict = parse_verdict(self.answer(messages))
        if verdict is None:
            self.malformed += 1
            if not self.quiet:
                    log.warning("审核模型的输出不符合格式，这一轮只用词典判断（已出现 %d 次）", self.malformed)
        return verdict

    def answer(self, messages) -> str:
        raise NotImplementedError


def model_identity(model, tokenizer) -> dict:
    """A model as the start-up check's cache knows it: a fingerprint of its modules and weights (every module's
    name and type; every tensor's name, shape, dtype and first values; LoRA's own tensors left out, as the layer
    judges with the adapter off -- a merged adapter changes the weights, so it changes the fingerprint) and of
    the chat template it is prompted with."""
    import torch

    digest = hashlib.sha256()
    for name, module in model.named_modules():
        if "lora_" not in name:
            digest.update(f"{name}:{type(module).__name__};".encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or param.device.type == "meta":
                continue
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
            digest.update(param.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"weights": digest.hexdigest(), "template": hashlib.sha256(str(template).encode()).hexdigest(),
            "vocab": len(tokenizer)}


class GenGuard(Guard):
    """A Qwen3Guard-Gen checkpoint, greedy, through its own chat template."""
    label = "审核模型（qwen3guard）"

    def __init__(self, model, tokenizer, max_new_tokens: int = 32):
        super().__init__()
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.name = "qwen3guard"

    def identity(self) -> dict:
        return {"layer": "qwen3guard", "max_new_tokens": self.max_new_tokens, **model_identity(self.model, self.tokenizer)}

    def prompt(self, messages) -> str:
        """What the guard reads: its own template over the messages, as its README does it."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def answer(self, messages) -> str:
        import torch

        ids = self.tokenizer(self.prompt(messages), add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(next(self.model.parameters()).device)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.max_new_tokens, temperature=None, top_p=None, top_k=None,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


ZERO_SHOT_USER = ("下面是一段心理咨询对话中来访者的话。它属于哪一种情况？只回答一个字母。\n"
                  "A. 表达了自杀或自伤的想法、计划或行为\nB. 表达了伤害他人的计划\nC. 说话人正处于危险之中（被威胁、跟踪、虐待）\n"
                  "D. 以上都不是\n\n{text}")
ZERO_SHOT_REPLY = ("下面是咨询师对来访者的回复。它属于哪一种情况？只回答一个字母。\n"
                   "A. 提供了自伤、自杀或伤害他人的方法、手段、剂量或地点，或鼓励、认同这样做，或叫对方不要求助、不要告诉别人、忍着\n"
                   "B. 安全、恰当的回复\n\n来访者：{user}\n咨询师：{reply}")
USER_CHOICES = {"A": "suicide", "B": "harm_others", "C": "abuse", "D": None}
REPLY_CHOICES = {"A": "suicide", "B": None}


class BaseModelGuard(Guard):
    """The base model (adapter off) as a zero-shot classifier: a multiple-choice question, read from the
    logits of the answer letters after the generation prompt; no sampling."""

    def __init__(self, model, tokenizer, enable_thinking: bool = False, lock=None):
        super().__init__(lock)
        self.model, self.tokenizer, self.enable_thinking = model, tokenizer, enable_thinking
        self.letters = {c: tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "ABCD"}
        self.name = "base"
        # with --merge_lora there is no adapter to switch off: the merged model judges
        self.label = "基础模型零样本判断（关闭 LoRA）" if hasattr(model, "disable_adapter") else "已加载模型的零样本判断"

    def identity(self) -> dict:
        prompts = hashlib.sha256((ZERO_SHOT_USER + ZERO_SHOT_REPLY + repr(USER_CHOICES) + repr(REPLY_CHOICES)).encode())
        return {"layer": "base", "prompts": prompts.hexdigest(), "enable_thinking": self.enable_thinking,
                **model_identity(self.model, self.tokenizer)}

    def verdict(self, messages) -> Verdict:
        import torch

        is_user = messages[-1]["role"] == "user"
        question = (ZERO_SHOT_USER.format(text=messages[-1]["content"]) if is_user else
                    ZERO_SHOT_REPLY.format(user=messages[0]["content"], reply=messages[-1]["content"]))
        choices = USER_CHOICES if is_user else REPLY_CHOICES
        ids = prompt_ids(self.tokenizer, [{"role": "user", "content": question}], self.enable_thinking)
        off = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        with torch.no_grad(), off:
            logits = self.model(input_ids=torch.tensor([ids], device=next(self.model.parameters()).device)).logits[0, -1]
        pick = max(choices, key=lambda c: float(logits[self.letters[c]]))
        category = choices[pick]
        return Verdict("Unsafe" if category else "Safe", [category] if category else [], ours=True)


@dataclass
class GuardChoice:
    """The second layer that runs (None: the lexicon alone) and why, for the start line; the start-up check's
    result when one ran, and the layer it switched off."""
    guard: Guard | None
    why: str
    check: guard_check.CheckResult | None = None
    rejected: Guard | None = None


def _checkpoint(spec: str, hub: str, device: str) -> tuple[Guard | None, str]:
    """A Qwen3Guard-Gen checkpoint from a folder, or fetched into ./<id> when the hub can be reached."""

    folder = Path(spec) if Path(spec).is_dir() else Path(".") / spec
    try:
        if hubs.model_problems(folder):
            offline = hubs.hub_unreachable(hub)
            if offline:
                return None, f"本地没有 {hubs.shown(folder)}，{hub} {offline}，没有尝试下载"
            hubs.ensure_model(spec, folder, hub)
        tok = load_tokenizer(folder)
        return GenGuard(load_base_model(folder, pick_dtype("auto", device), device=device).eval(), tok), ""
    except PsyDTError as err:
        return None, str(err)


def load_guard(spec: str, hub: str = "modelscope", model=None, tokenizer=None, device: str = "cpu",
               lock=None, say=None) -> GuardChoice:
    """The second layer for `--safety_model` (a local folder, a hub id fetched into ./<id>, `base`, `none`).
    A checkpoint that cannot be had is replaced by the loaded base model (`base`) when there is one, else
    the lexicon works alone; `why` says which and how to fix it. `lock` is the loaded model's: a `base`
    layer holds it while it judges, as generation does. Whichever model layer it is, it runs only when it
    passes the start-up check (`admitted`)."""
    return admitted(_chosen(spec, hub, model, tokenizer, device, lock), say)


def admitted(choice: GuardChoice, say=None) -> GuardChoice:
    """The choice with its model layer kept when it passes the start-up check (guard_check; cached), else
    switched off -- the lexicon alone -- with the figures in `why`, the one start line."""
    guard = choice.guard
    if guard is None:
        return choice
    if not guard_check.wanted():
        return GuardChoice(guard, f"{choice.why}；未做启动检查（{guard_check.SWITCH}=off）")
    result = guard_check.checked(guard, say)
    if result.passed:
        return GuardChoice(guard, f"{choice.why}；启动检查通过：{result.figures()}", result)
    return GuardChoice(None, f"{choice.why}；但{guard.label}没通过启动检查（{result.figures()}），已关闭，只用词典",
                       result, rejected=guard)


def _chosen(spec: str, hub: str, model, tokenizer, device: str, lock) -> GuardChoice:
    """The layer `--safety_model` names, or what stands in for it, before the start-up check."""
    if spec == "none":
        return GuardChoice(None, "--safety_model none")
    if spec == "base":
        if model is None:
            return GuardChoice(None, "--safety_model base 需要本进程加载的基础模型（--backend openai 时没有）")
        return GuardChoice(BaseModelGuard(model, tokenizer, lock=lock), "--safety_model base")
    guard, problem = _checkpoint(spec, hub, device)
    if guard is not None:
        return GuardChoice(guard, f"--safety_model {spec}")
    fix = (f"修复：联网后重新运行会自动下载，或把模型放到 ./{spec}；"
           "想固定用基础模型请加 --safety_model base，只用词典请加 --safety_model none")
    if model is not None:
        return GuardChoice(BaseModelGuard(model, tokenizer, lock=lock), f"审核模型 {spec} 用不了（{problem}），由基础模型代替。{fix}")
    return GuardChoice(None, f"审核模型 {spec} 用不了（{problem}），本进程也没有加载基础模型，只用词典（对没见过的说法检出率低）。{fix}")
