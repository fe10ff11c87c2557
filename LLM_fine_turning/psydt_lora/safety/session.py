"""What a front end holds for its safety layer: the resources, the guard beside the lexicon, the
detections of a session, steering for crisis turns and the reply screen. Detections are kept in memory
for the session (and in the local output files); nothing is logged or uploaded.

A `Safety` is built whole: its resources and its second layer (the guard choice and why) are given at
construction and never changed. `--safety off` is `DisabledSafety`, the same interface doing nothing, so
the front ends never ask whether there is a safety layer."""
from datetime import datetime

from psydt_lora.safety import resources as res
from psydt_lora.safety.measurement import batch_summary
from psydt_lora.safety.rules import CATEGORY_NAMES, Detection, asked_before, detect, harmful_reply
from psydt_lora.safety.screen import PassThrough, ReplyScreen

OFF_WARNING = "[警告] 安全层已关闭（--safety off）：不会检测危机语言、不会显示求助资源、不会过滤回复。"


class Safety:
    """Both layers on a user's turn, notice and steering for a crisis turn, the screen for a reply."""
    enabled = True

    def __init__(self, resources_path=None, guard=None, why: str = ""):
        self.resources, self.source = res.load_resources(resources_path)
        self._guard = guard  # guard.Guard or None: the second layer beside the lexicon
        self.why = why  # why these layers run (the start line says it)
        self.events = []

    @property
    def guard(self):
        return self._guard

    def guard_cost(self) -> str | None:
        g = self._guard
        if g is None:
            return None
        return f"审核模型 {g.name}：{g.calls} 次，平均 {g.ms_per_call():.0f} ms/次，格式不符 {g.malformed} 次"

    def layers(self) -> str:
        return "词典" + (f" + {self._guard.label}" if self._guard is not None else "")

    def start_line(self) -> str:
        """The one line every front end prints at start: which layers run, and why."""
        return f"[安全] 启用的安全层：{self.layers()}" + (f"（{self.why}）" if self.why else "")

    def banner(self) -> str:
        """The resources, shown when a chat opens."""
        return f"{res.format_resources(self.resources)}\n（求助资源来自：{self.source}）"

    def describe(self) -> str:
        return f"on（资源：{self.source}）"

    def record(self, kind: str, detection: Detection | None = None):
        event = {"time": datetime.now().isoformat(timespec="seconds"), "event": kind}
        if detection is not None:
            event.update(detection.as_dict())
        self.events.append(event)

    def check_turn(self, messages) -> Detection:
        """The last user turn: the lexicon on its words, the guard (if any) on it with recent history.
        A crisis when either layer says so; `layers` keeps what each said. The lexicon also reads the
        counsellor's turn before it: a two-word answer to 'have you thought of suicide?' is a crisis."""
        found = self.lexicon_check(messages)
        if self._guard is None:
            return found
        verdict = self._guard.check_user(messages)
        if verdict is None:
            found.layers[self._guard.name] = {"error": "malformed verdict"}
            return found
        cats = verdict.crisis_categories
        found.layers[self._guard.name] = {"crisis": bool(cats), "categories": cats, "label": verdict.label}
        if cats:
            found.crisis = True
            found.categories = sorted(set(found.categories) | set(cats))
            found.level = found.level or "concern"
        return found

    @staticmethod
    def lexicon_check(messages, part=None) -> Detection:
        """The lexicon alone on the last user turn, reading the counsellor's turn before it; `part` picks what of
        each text is read (the server's cap before admission), the whole text by default."""
        part = part or (lambda text: text)
        asked = asked_before(messages)
        found = detect(part(messages[-1]["content"]), asked=asked and part(asked))
        found.layers = {"lexicon": {"crisis": found.crisis, "categories": list(found.categories), "level": found.level}}
        return found

    def reply_layers(self, user_text: str, reply: str) -> dict:
        """Which layers find the reply harmful: the guard first, the lexicon second."""
        out = {}
        if self._guard is not None:
            verdict = self._guard.check_reply(user_text, reply)
            out[self._guard.name] = None if verdict is None else verdict.unsafe
        out["lexicon"] = harmful_reply(reply)
        return out

    def screen(self, hold: bool, user_text: str) -> ReplyScreen:
        return ReplyScreen(lambda reply: any(self.reply_layers(user_text, reply).values()), self.safe_reply(), hold)

    def screened(self, user_text: str, response: str) -> dict:
        """A batch-test reply through the same screen, whole: its screening fields."""
        return self.screen(True, user_text).finish(response).fields()

    def result_fields(self, messages, response: str, base_response: str | None = None) -> dict:
        """A batch-test result's safety fields: the user's turn checked once, with its history, as in chat and
        serve; the reply (and the base model's, when compared) through the screen."""
        fields = {"safety": self.check_turn(messages).as_dict(), **self.screened(messages[-1]["content"], response)}
        if base_response is not None:
            fields.update({f"base_{k}": v for k, v in self.screened(messages[-1]["content"], base_response).items()})
        return fields

    def batch_summary(self, results) -> dict | None:
        return batch_summary(results, self._guard)

    def response_block(self, detection: Detection, screened: bool = False) -> dict:
        """The `safety` object of a server response: the turn's detection (with the help resources and a notice
        to show before the reply on a crisis turn) and whether the reply was screened and replaced."""
        block = {"enabled": True, **detection.as_dict(), "screened": screened}
        if detection.crisis:
            block["notice"] = self.notice(detection)
            block["resources"] = self.resources["resources"]
        return block

    def notice(self, detection: Detection) -> str:
        return res.notice(self.resources, detection.level)

    def safe_reply(self) -> str:
        return res.safe_reply(self.resources)

    def guidance(self, detection: Detection) -> str | None:
        """The model's instruction for this turn: a crisis turn's, a resolved past's gentle check-in, or None."""
        if detection.check_in and not detection.crisis:
            return res.check_in_guidance(self.resources)
        if not detection.crisis:
            return None
        names = "、".join(CATEGORY_NAMES.get(c, c) for c in detection.categories)
        return res.guidance(self.resources, names, detection.level)

    @staticmethod
    def with_guidance(messages, guidance: str) -> list[dict]:
        msgs = [dict(m) for m in messages]
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = msgs[0]["content"] + "\n\n" + guidance
        else:
            msgs.insert(0, {"role": "system", "content": guidance})
        return msgs


class DisabledSafety:
    """`--safety off`: the interface of Safety, detecting nothing, showing no resources, screening nothing."""
    enabled = False
    resources = None
    source = None
    guard = None

    def __init__(self):
        self.events = []

    def guard_cost(self) -> None:
        return None

    def layers(self) -> str:
        return "无"

    def start_line(self) -> str:
        return OFF_WARNING

    def banner(self) -> str:
        return ""

    def describe(self) -> str:
        return "off"

    def record(self, kind: str, detection: Detection | None = None):
        pass

    def check_turn(self, messages) -> Detection:
        return Detection()  # never a crisis

    def lexicon_check(self, messages, part=None) -> Detection:
        return Detection()

    def guidance(self, detection: Detection) -> None:
        return None

    def screen(self, hold: bool, user_text: str) -> PassThrough:
        return PassThrough()

    def result_fields(self, messages, response: str, base_response: str | None = None) -> dict:
        return {}

    def batch_summary(self, results) -> None:
        return None

    def response_block(self, detection: Detection, screened: bool = False) -> dict:
        return {"enabled": False}
