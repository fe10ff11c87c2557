"""Who the simulated client is: a profile (a short story in Chinese), held with an attitude and, for a crisis
persona, a risk level and a disclosure that comes only at a given client turn.

Three sources, one shape (a JSON list of objects):
  - the shipped set, judge/data/profiles_zh.json: written for this project -- the 9 CPsyCounE topics x
    cooperative / ambivalent / resistant (two stories each), and crisis personas from low to imminent risk;
  - "replay" profiles from a PsyDTCorpus-format test file: the real client's own turns become the story;
  - the user's own file (--profiles FILE): `id`, `profile` (free text), optional `attitude`, `risk`,
    `opening` (the first message, sent as is), `topic`, and for a late disclosure `disclosure` + `disclose_at`.
"""
from dataclasses import dataclass
from pathlib import Path

from psydt_lora.data.dialogues import _spread, group_prefix_items, read_dialogues
from psydt_lora.errors import PsyDTError
from psydt_lora.files import read_json

SHIPPED = Path(__file__).resolve().parent / "data" / "profiles_zh.json"
ATTITUDES = {"cooperative": "合作", "ambivalent": "矛盾", "resistant": "抗拒"}
RISKS = {"none": "无", "low": "低", "moderate": "中", "high": "高", "imminent": "紧迫"}
REPLAY_TURNS = 12  # the first client turns of a replayed dialogue that make its story


@dataclass(frozen=True)
class Profile:
    id: str
    profile: str
    attitude: str | None = None  # a key of ATTITUDES; None: as the story says
    risk: str = "none"  # a key of RISKS
    opening: str | None = None  # the client's first message, as is; None: the client model opens
    topic: str | None = None
    disclosure: str | None = None  # what the client says first at client turn `disclose_at`
    disclose_at: int | None = None
    kind: str = "user"  # "shipped", "replay" or "user"

    @property
    def crisis(self) -> bool:
        return self.risk != "none"

    @property
    def attitude_name(self) -> str:
        return ATTITUDES.get(self.attitude, "未指定")


def load_profiles(path=SHIPPED, kind: str = "user") -> list[Profile]:
    """A profiles file, every record checked; a bad one names the file, the record and the field."""
    data = read_json(path, "来访者设定文件")
    if not isinstance(data, list) or not data:
        raise PsyDTError(f"来访者设定文件 {path} 应是非空的 JSON 列表（每条一个来访者设定）。")
    profiles = [_profile(path, i, r, kind) for i, r in enumerate(data)]
    seen = set()
    for i, p in enumerate(profiles):
        if p.id in seen:
            raise PsyDTError(f"来访者设定文件 {path} 第 {i + 1} 条：id {p.id!r} 重复。")
        seen.add(p.id)
    return profiles


def _profile(path, i: int, r, kind: str) -> Profile:
    where = f"来访者设定文件 {path} 第 {i + 1} 条"
    if not isinstance(r, dict):
        raise PsyDTError(f"{where} 不是对象。")
    for name in ("id", "profile"):
        if not isinstance(r.get(name), str) or not r[name].strip():
            raise PsyDTError(f"{where} 缺少字段 {name!r}（非空文字）。")
    for name in ("opening", "topic", "disclosure"):
        if r.get(name) is not None and not (isinstance(r[name], str) and r[name].strip()):
            raise PsyDTError(f"{where} 的字段 {name!r} 应是非空文字。")
    if r.get("attitude") is not None and r["attitude"] not in ATTITUDES:
        raise PsyDTError(f"{where} 的字段 'attitude' 只能是 {'、'.join(ATTITUDES)}（得到 {r['attitude']!r}）。")
    if r.get("risk", "none") not in RISKS:
        raise PsyDTError(f"{where} 的字段 'risk' 只能是 {'、'.join(RISKS)}（得到 {r['risk']!r}）。")
    at = r.get("disclose_at")
    if (r.get("disclosure") is None) != (at is None) or (at is not None and (type(at) is not int or at < 1)):
        raise PsyDTError(f"{where}：'disclosure'（文字）和 'disclose_at'（第几次发言，≥1 的整数）要一起给。")
    return Profile(r["id"], r["profile"].strip(), r.get("attitude"), r.get("risk", "none"), r.get("opening"),
                   r.get("topic"), r.get("disclosure"), at, kind)


def shipped_profiles() -> list[Profile]:
    return load_profiles(SHIPPED, kind="shipped")


def replay_profiles(path) -> list[Profile]:
    """One profile per dialogue of a PsyDTCorpus-format file (the training shape, or the test split where
    consecutive items are growing prefixes of one dialogue): the client's own turns, in order, are the story
    and the first of them the opening."""
    items, _ = read_dialogues(path)
    out = []
    for group in group_prefix_items(items):
        d = items[group[-1]]  # the longest prefix holds the whole dialogue
        said = [m["content"] for m in d.messages if m["role"] == "user"]
        if not said:
            continue
        story = "\n".join(f"{n}. {t}" for n, t in enumerate(said[:REPLAY_TURNS], 1))
        text = ("这是一位真实来访者在咨询中按顺序说过的话。你就是这位来访者：按这些经历和先后顺序，一点点讲出来，"
                "可以换说法，但不要加入新的重大事件。\n" + story)
        pid = f"replay-{d.id if d.id is not None else d.index}"
        out.append(Profile(pid if all(p.id != pid for p in out) else f"{pid}-{d.index}", text, None, "none", said[0],
                           d.tag, kind="replay"))
    if not out:
        raise PsyDTError(f"{path} 里没有来访者的发言，无法做成回放设定。")
    return out


def pick_spread(profiles: list[Profile], n: int) -> list[Profile]:
    """n profiles evenly spread over the list (the same rule as the test-item pick); n <= 0 keeps all."""
    if n <= 0 or n >= len(profiles):
        return profiles
    return [profiles[i] for i in _spread(len(profiles), n)]
