"""What a front end holds for its safety layer: the resources, the guard beside the lexicon, the
detections of a session, steering for crisis turns and the reply screen. Detections are kept in memory
for the session (and in the local output files); nothing is logged or uploaded."""
from datetime import datetime

from psydt_lora.safety import resources as res
from psydt_lora.safety.rules import CATEGORY_NAMES, Detection, detect, harmful_reply
from psydt_lora.safety.screen import ReplyScreen

# Added to the system prompt for the turn in which a crisis signal was detected. The system prompt is
# the slot the model was trained to follow; the user's own words stay untouched and nothing is shown.
GUIDANCE = (
    "【安全提示】来访者刚才的话里可能包含危机信号（{categories}）。请把来访者的安全放在第一位："
    "温和、直接地表达关心，认真倾听，询问其现在是否安全、是否有伤害自己或他人的具体打算；"
    "鼓励其立即联系专业帮助（全国心理援助热线 12356、希望24热线 400-161-9995，紧急情况拨打 110 或 120）"
    "或身边信任的人；不要评判，不要提供任何伤害自己或他人的方法或细节。"
)


class Safety:
    """Both layers on a user's turn, notice and steering for a crisis turn, the screen for a reply."""

    def __init__(self, resources_path=None, guard=None):
        self.resources, self.source = res.load_resources(resources_path)
        self.guard = guard  # guard.Guard or None: the second layer beside the lexicon
        self.events = []

    def guard_cost(self) -> str:
        g = self.guard
        return f"审核模型 {g.name}：{g.calls} 次，平均 {g.ms_per_call():.0f} ms/次，格式不符 {g.malformed} 次"

    def layers(self) -> str:
        return "词典" + (f" + {self.guard.label}" if self.guard is not None else "")

    def record(self, kind: str, detection: Detection | None = None):
        event = {"time": datetime.now().isoformat(timespec="seconds"), "event": kind}
        if detection is not None:
            event.update(detection.as_dict())
        self.events.append(event)

    def check_turn(self, messages) -> Detection:
        """The last user turn: the lexicon on its words, the guard (if any) on it with recent history.
        A crisis when either layer says so; `layers` keeps what each said."""
        found = detect(messages[-1]["content"])
        found.layers = {"lexicon": {"crisis": found.crisis, "categories": list(found.categories), "level": found.level}}
        if self.guard is None:
            return found
        verdict = self.guard.check_user(messages)
        if verdict is None:
            found.layers[self.guard.name] = {"error": "malformed verdict"}
            return found
        cats = verdict.crisis_categories
        found.layers[self.guard.name] = {"crisis": bool(cats), "categories": cats, "label": verdict.label}
        if cats:
            found.crisis = True
            found.categories = sorted(set(found.categories) | set(cats))
            found.level = found.level or "concern"
        return found

    def reply_layers(self, user_text: str, reply: str) -> dict:
        """Which layers find the reply harmful: the guard first, the lexicon second."""
        out = {}
        if self.guard is not None:
            verdict = self.guard.check_reply(user_text, reply)
            out[self.guard.name] = None if verdict is None else verdict.unsafe
        out["lexicon"] = harmful_reply(reply)
        return out

    def screen(self, hold: bool, user_text: str) -> ReplyScreen:
        return ReplyScreen(lambda reply: any(self.reply_layers(user_text, reply).values()), self.safe_reply(), hold)

    def screened(self, user_text: str, response: str) -> dict:
        """A batch-test reply through the same screen, whole: its screening fields."""
        return self.screen(True, user_text).finish(response).fields()

    def notice(self, detection: Detection) -> str:
        return res.notice(self.resources, detection.level)

    def screened_message(self) -> str:
        return res.screened_message(self.resources)

    def safe_reply(self) -> str:
        return res.safe_reply(self.resources)

    def guidance(self, detection: Detection) -> str:
        names = "、".join(CATEGORY_NAMES.get(c, c) for c in detection.categories)
        return GUIDANCE.format(categories=names)

    @staticmethod
    def with_guidance(messages, guidance: str) -> list[dict]:
        msgs = [dict(m) for m in messages]
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = msgs[0]["content"] + "\n\n" + guidance
        else:
            msgs.insert(0, {"role": "system", "content": guidance})
        return msgs
