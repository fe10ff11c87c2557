"""The lexicon: crisis language in a user's turn, harmful content in a reply, by rules kept as data.

The rules, their examples and the policy that drops hits live in `data/lexicon.json`. Text is brought to one
form first (NFKC, lower case, traditional -> simplified by OpenCC, the variant spellings of `variants`); the
words around a hit are read as words (jieba), so a negation is a word (不想, 没有, 别) and never a character
inside another word (特别, 告别). Nothing here logs or uploads text.
"""
import json
import re
import unicodedata
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import opencc

DATA = Path(__file__).resolve().parent / "data"
LEXICON = DATA / "lexicon.json"
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff])[ \t\u3000]+(?=[\u3400-\u9fff])")
# 药吃下去了 别找我: a space between clauses -- not after a negation or a modal (我不想 活下去了 is one phrase)
_CLAUSE_GAP = re.compile(r"(?<=[\u3400-\u9fff]{3})(?<![不没别想要会有过])[ \t\u3000]+(?=[\u3400-\u9fff]{3})")
_CLAUSE = re.compile(r"[，。！？；,.!?;…\n]")
_SENTENCE = re.compile(r"[。！？!?\n]")
_SENTENCE_SPAN = re.compile(r"[^。！？!?\n]+[。！？!?\n]*")  # a sentence with the marks that end it
_SPAN_MAX = 200  # a clause read around a hit goes back / forward at most this far: no clause of real text is longer
_PREPOSITION = re.compile(r"(和|跟|与|同|对|向|给|为|替|被|帮|让)(我的?|他的?|她的?)?(好)?(每个|每一个|所有|各位|几个)?$")  # 跟爸妈闹翻时, 给每个朋友: not the subject

CATEGORY_NAMES = {"suicide": "自杀风险", "self_harm": "自伤", "harm_others": "伤害他人", "abuse": "正在遭受暴力或虐待"}


@dataclass
class Detection:
    crisis: bool = False
    categories: list = field(default_factory=list)
    level: str | None = None  # "concern" or "imminent"
    matches: list = field(default_factory=list)  # (category, level, matched text) -- kept local only
    layers: dict = field(default_factory=dict)  # what each layer said: {"lexicon": {...}, "qwen3guard": {...}}
    check_in: bool = False  # crisis words told as a resolved past: no crisis notice, a gentle check-in instead

    def as_dict(self) -> dict:
        out = {"crisis": self.crisis, "categories": self.categories, "level": self.level, "layers": self.layers}
        return {**out, "check_in": True} if self.check_in else out


@dataclass
class _Rule:
    id: str
    category: str
    level: str
    kind: str  # strong, mention, violence_word, bare, disclosure (see lexicon.json "policy")
    regex: re.Pattern


@dataclass
class _Policy:
    id: str
    when: list
    unless: list
    kinds: list
    levels: list
    categories: list

    def drops(self, kind: str, level: str, category: str) -> bool:
        return (kind in self.kinds and (not self.levels or level in self.levels)
                and (not self.categories or category in self.categories))


def _alternation(patterns) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


def _words(data: dict) -> dict:
    words = data["negation_words"]
    return {"negation_words": set(words["words"]), "negation_heads": words["heads"],
            "not_negation_words": set(words["not_negation"]), "negation_chars": re.compile(f"[{words['heads']}{''.join(w[0] for w in words['words'])}]"),
            "stop_words": set(words["stop"])}


@lru_cache(maxsize=4)
def load_rules(path=LEXICON, without_benign: tuple = ()):
    """The compiled lexicon; `without_benign` leaves those benign_rules ids out (tests prove each is needed)."""
    data = json.loads(Path(path).read_text("utf-8"))
    benign = [p for r in data.get("benign_rules", {}).get("rules", []) if r["id"] not in without_benign
              for p in r["patterns"]] + data["benign"]
    rules = [_Rule(r["id"], r["category"], r["level"], r["kind"], _alternation(r["patterns"]))
             for r in data["rules"] + data.get("kinds", {}).get("rules", [])]
    policy = [_Policy(p["id"], p["when"], p["unless"], p["kinds"], p.get("levels", []), p.get("categories", []))
              for p in data["policy"]["rules"]]
    combos = [(c["category"], c["level"], re.compile(c["anchor"]), re.compile(c["with"])) for c in data["combos"]["rules"]]
    reply = data["harmful_reply"]
    frames = {k: re.compile(v) for k, v in reply["safe_frames"].items() if isinstance(v, str) and k != "about"}
    harmful = [(_alternation(reply["patterns"]), None, False)] + [
        (_alternation(rule["patterns"]), re.compile(rule["unless"]) if rule.get("unless") else None,
         bool(rule.get("unless_reply_limits"))) for rule in reply.get("rules", [])]
    return {
        "benign": _alternation(benign),
        "variants": [(re.compile(v["pattern"]), v["to"]) for v in data["variants"]["rules"]],
        "not_negation": re.compile(data["negation_exceptions"]),
        "post_negation": re.compile(data["post_negation"]),
        "negation_en": re.compile(data["negation_en"]),
        **_words(data),
        "context": {k: re.compile(v) for k, v in data["weak_context"].items()},
        "frames": {k: re.compile(v) for k, v in data["frames"].items() if k != "about"},
        "answers": {k: re.compile(v) for k, v in data["answers"]["patterns"].items()},
        "answer_max": data["answers"]["max_chars"],
        "policy": policy,
        "rules": rules,
        "combos": combos,
        "harmful": harmful,
        "reply_structures": _reply_structures(reply, frames),
        "reply_reflection": frames["reflection"],
        "reply_voice": frames["own_voice"],
        "reply_limits": frames["reply_limits"],
        "reply_quoted": re.compile(reply["quoted"]),
    }


def _reply_structures(reply: dict, frames: dict) -> list:
    """(id, the features that must all be in one sentence, and the safe frames any one of which lets it through:
    those read in the sentence, those read in the clause of its last feature, those read in the whole reply)."""
    features = {k: re.compile(v) for k, v in reply["features"].items() if k != "about"}
    scope = {**{f: "clause" for f in reply["safe_frames"]["clause_scoped"]},
             **{f: "reply" for f in reply["safe_frames"]["reply_scoped"]}}

    def read_in(s, where):
        return [frames[f] for f in s["unless"] if scope.get(f, "sentence") == where]
    return [(s["id"], [features[f] for f in s["all"]], read_in(s, "sentence"), read_in(s, "clause"), read_in(s, "reply"))
            for s in reply["structures"]]


@lru_cache(maxsize=1)
def _converter():
    return opencc.OpenCC("t2s")


def normalize(text: str, rules=None) -> str:
    """One form for matching: NFKC, lower case, simplified characters, variant spellings; a space between runs of
    three or more CJK characters is a clause mark (chat writes clauses that way), other gaps between CJK go (自 杀)."""
    text = _converter().convert(unicodedata.normalize("NFKC", text).lower())
    for rx, to in (rules or load_rules())["variants"]:
        text = rx.sub(to, text)
    return _CJK_GAP.sub("", _CLAUSE_GAP.sub(",", text))


class _Marks:
    """Where one text's clause (or sentence) marks are, found once per call: the clause around each hit is a
    lookup, not a re-split of the whole text, so a long message costs time in proportion to its length."""

    def __init__(self, text: str, rx: re.Pattern = _CLAUSE):
        self.text = text
        self.at = [m.start() for m in rx.finditer(text)]

    def head(self, start: int) -> str:
        """The clause's part before `start` (as rx.split(text[:start])[-1], at most _SPAN_MAX characters)."""
        i = bisect_left(self.at, start)
        return self.text[max(self.at[i - 1] + 1 if i else 0, start - _SPAN_MAX):start]

    def tail(self, end: int) -> str:
        """The clause's part from `end` on (as rx.split(text[end:])[0], at most _SPAN_MAX characters)."""
        i = bisect_left(self.at, end)
        return self.text[end:min(self.at[i] if i < len(self.at) else len(self.text), end + _SPAN_MAX)]


def _blank(match) -> str:
    return "□" * len(match.group(0))


@lru_cache(maxsize=1)
def _segmenter():
    import jieba  # lazy: its dictionary takes about half a second to load, once, on the first negation read

    jieba.setLogLevel(60)
    jieba.initialize()
    return jieba


def words(text: str) -> list[str]:
    """The words of a short span (jieba, dictionary only: the same text always gives the same words)."""
    return _segmenter().lcut(text, HMM=False)


def _is_negation(word: str, r) -> bool:
    if word in r["negation_words"]:
        return True
    return len(word) <= 3 and word[0] in r["negation_heads"] and word not in r["not_negation_words"]


def _negated(c: _Marks, start: int, r) -> bool:
    """A negation word closes the clause right before the match (不会, 从来没, 别 ...), at most a few characters
    and no pronoun or particle between; a character of another word (特别, 告别) is no negation, nor are
    忍不住 / 控制不住 (negation_exceptions)."""
    clause = c.head(start)
    if r["negation_en"].search(clause):
        return True
    before = r["not_negation"].sub(_blank, clause)[-8:]
    if not r["negation_chars"].search(before):
        return False
    between = 0
    for word in reversed(words(before)):
        if _is_negation(word, r):
            return True
        between += len(word)
        if word in r["stop_words"] or between > 3:
            return False
    return False


def _denied_after(c: _Marks, m, r) -> bool:
    """A denial that closes the clause after the hit: 自杀的念头我从来没有过."""
    return bool(r["post_negation"].search(c.tail(m.end())))


def _clause_of(c: _Marks, m) -> tuple[str, str]:
    """The clause a match sits in, and the part of it before the match."""
    head = c.head(m.start())
    return head + c.tail(m.start()), head


def _self_directed(c: _Marks, m, r) -> bool:
    """A bare death word counts only about the speaker: nobody else named before it in its clause, and 'I' in
    the clause or, the subject dropped as Chinese does, a wish or a question of how (怎样才能不痛地死)."""
    clause, head = _clause_of(c, m)
    frames = r["frames"]
    if frames["others"].search(head):
        return False
    return bool(frames["self"].search(clause) or frames["wish"].search(clause))


def _about_someone_else(c: _Marks, m, r) -> bool:
    """Whom a hit is about: the last person named before it in its clause (我室友说她不想活了: her, not me);
    with nobody named there the dropped subject is the speaker's, and a hit naming 我 / 自己 is the speaker's."""
    frames = r["frames"]
    if frames["self"].search(m.group(0)):
        return False
    head = c.head(m.start())
    others = [o.end() for o in frames["person"].finditer(head) if not _PREPOSITION.search(head[:o.start()])]
    selves = [s.end() for s in frames["self"].finditer(head)]
    return bool(others) and (not selves or others[-1] > selves[-1])


def _told_of_others(c: _Marks, m, r) -> bool:
    """A death told as a fact or a story about someone else (梵高是自杀的吗, 他们都是自杀的): no 我 in the clause."""
    clause, _ = _clause_of(c, m)
    return bool(r["frames"]["told_of_others"].search(clause)) and not r["frames"]["self"].search(clause)


def _counts(c: _Marks, m, rule, r) -> bool:
    """A hit stands unless negated before or after, or (for the speaker's own risk) about someone else or told
    as someone else's story; a bare death word needs its self-directed frame."""
    if _negated(c, m.start(), r) or _denied_after(c, m, r):
        return False
    if rule.kind == "bare" and not _self_directed(c, m, r):
        return False
    own_risk = rule.category in ("suicide", "self_harm") and rule.kind != "disclosure"
    return not (own_risk and (_about_someone_else(c, m, r) or _told_of_others(c, m, r)))


def _rule_hits(c: _Marks, r, dropped) -> list:
    hits = []
    for rule in r["rules"]:
        if rule.kind != "disclosure" and dropped(rule.kind, rule.level, rule.category):
            continue  # an attempt or a lethal-amount question is never dropped by a context word
        hits += [(rule.category, rule.level, m.group(0)) for m in rule.regex.finditer(c.text) if _counts(c, m, rule, r)]
    return hits


def _combo_hits(c: _Marks, r, dropped) -> list:
    hits, t = [], c.text
    for category, level, anchor, partner in r["combos"]:
        if dropped("combo", level, category):
            continue
        found = [m for m in anchor.finditer(t) if not _negated(c, m.start(), r) and not _denied_after(c, m, r)
                 and not (category in ("suicide", "self_harm")
                          and (_about_someone_else(c, m, r) or _told_of_others(c, m, r)))]
        if found and partner.search(t.replace(found[0].group(0), "□" * len(found[0].group(0)), 1) if len(found) == 1 else t):
            hits.append((category, level, found[0].group(0)))
    return hits


def _answer_hits(t: str, asked: str | None, r) -> list:
    """A short answer to the counsellor's own question about suicide, self-harm, a plan or safety: yes is a
    crisis (a plan or means: imminent), a clear no is not; 'am I safe? -- not really' is imminent; to a question
    about a plan, means or timing any answer that is no denial is a yes (这周末, 攒了一些)."""
    if not asked or len(t) > r["answer_max"]:
        return []
    q = normalize(asked, r)
    a = r["answers"]
    if not a["question"].search(q) or not a["topic"].search(q):
        return []
    if a["safety_topic"].search(q) and a["unsafe"].search(t):
        return [("suicide", "imminent", t)]
    clauses = [c.strip() for c in _CLAUSE.split(t) if c.strip()]
    plan = bool(a["plan_topic"].search(q))
    if not clauses or any(a["no"].match(c) for c in clauses) or not (plan or any(a["yes"].match(c) for c in clauses)):
        return []
    category = "self_harm" if a["self_harm_topic"].search(q) and not a["suicide_topic"].search(q) else "suicide"
    return [(category, "imminent" if plan else "concern", t)]


def _calm_after(t: str, hits: list, r) -> bool:
    """A clause that starts with a present marker (现在, 后来, 长大以后 ...), after a past marker and after every
    hit, holding no hit and nothing worse: 小时候想过死，长大以后就没有了."""
    f = r["frames"]
    past = f["past"].search(t)
    if not past:
        return False
    last_hit = max(t.rfind(text) + len(text) for _, _, text in hits)
    start = 0
    for clause in _CLAUSE.split(t):
        begins = start
        start += len(clause) + 1
        clause = clause.strip()
        if begins < max(past.end(), last_hit) or not f["calm_present"].search(clause):
            continue
        return not f["worse"].search(clause)
    return False


def _resolved(t: str, hits: list, r) -> bool:
    """A crisis told as over: a past marker and a present recovery (a recovery phrase, or a calm present clause
    after it), and nothing about it in the present tense."""
    f = r["frames"]
    if not (f["past"].search(t) and (f["recovery"].search(t) or _calm_after(t, hits, r))):
        return False
    return not f["present"].search(f["recovery"].sub(_blank, t))


def asked_before(messages) -> str | None:
    """The counsellor's turn right before the last (user) turn of a conversation, if there is one."""
    if len(messages) > 1 and messages[-2].get("role") == "assistant" and isinstance(messages[-2].get("content"), str):
        return messages[-2]["content"]
    return None


def detect(text: str, asked: str | None = None, rules=None) -> Detection:
    """Crisis signals in one user turn: rule hits, minus those a negation or an active policy entry drops;
    `asked` is the counsellor's turn right before it (a two-word answer to 'have you thought of suicide?')."""
    r = rules or load_rules()
    t = r["benign"].sub(_blank, normalize(text, r))
    present = {name for name, rx in r["context"].items() if rx.search(t)}
    active = [p for p in r["policy"] if all(w in present for w in p.when) and not any(u in present for u in p.unless)]

    def dropped(kind, level, category):
        return any(p.drops(kind, level, category) for p in active)

    c = _Marks(t)
    found = Detection(matches=_rule_hits(c, r, dropped) + _combo_hits(c, r, dropped) + _answer_hits(t, asked, r))
    if found.matches:
        found.categories = sorted({c for c, _, _ in found.matches})
        if _resolved(t, found.matches, r):
            found.check_in = True  # lowered, never silenced: the front end asks gently how the person is now
        else:
            found.crisis = True
            found.level = "imminent" if any(level == "imminent" for _, level, _ in found.matches) else "concern"
    return found


_NEXT_HEAD = 6  # a safe frame may open the next sentence: 离开也没什么不好。但我更想你留下
_VOICE_MAX = 4  # the reply's own voice opens a clause within this many characters: 我也这么觉得, 其实, 说实话
_REFLECTED_CLAUSES = 1  # 你提到体检前会偷偷多喝水，怕医生发现你瘦了: the reflection's clause and one more


def _structure_hit(t: str, r) -> str | None:
    """The id of the first reply structure whose features are all in one sentence with none of its safe frames
    there (or at the start of the next sentence), none of its clause frames (a third person) in the clause of its
    last feature, that feature neither negated (不会替你保密) nor in the person's words given back, and none of its
    reply frames in the reply."""
    sentences = [m.group(0) for m in _SENTENCE_SPAN.finditer(t)]
    for i, sentence in enumerate(sentences):
        window = sentence + (sentences[i + 1][:_NEXT_HEAD] if i + 1 < len(sentences) else "")
        marks = None
        for sid, features, frames, clause_frames, reply_frames in r["reply_structures"]:
            found = [f.search(sentence) for f in features]
            if not all(found) or any(f.search(window) for f in frames):
                continue
            marks = marks or _Marks(sentence)
            last = max(m.start() for m in found)  # the reply's own predicate comes last: 你说……，我也这么觉得
            clause = marks.head(last) + marks.tail(last)
            if (not any(f.search(clause) for f in clause_frames) and not any(f.search(t) for f in reply_frames)
                    and not _reflected(sentence, last, r) and not _negated(marks, last, r)):
                return sid
    return None


def _reflected(sentence: str, at: int, r) -> bool:
    """Whether `at` lies in the person's words given back: from a reflection (你说, 你觉得, 听起来 ...) up to the
    first later clause in the reply's own voice (我…, 这…, 其实…, 可以…): 你提到体检前会偷偷多喝水，怕医生发现。"""
    for m in r["reply_reflection"].finditer(sentence[:at]):
        parts = _CLAUSE.split(sentence[m.end():at])  # the clauses after the reflection, the last one `at`'s own
        if len(parts) > 1 + _REFLECTED_CLAUSES:
            continue  # a reflection gives back its own clause and the next, no further
        opened = parts[1:-1] + [parts[-1] + sentence[at:at + _VOICE_MAX]] if len(parts) > 1 else []
        if not any(r["reply_voice"].match(part) for part in opened):
            return True
    return False


def harmful_reply(text: str, rules=None) -> bool:
    """A reply that gives means/methods of self-harm or suicide, coaches an eating disorder, promises to keep a
    plan secret, or encourages a death: a structure of word classes in one sentence (lexicon.json
    harmful_reply.structures) or a phrase rule (its `unless` in the same sentence lets a safe reply through).
    The person's own words quoted back (你说：“……”) and a phrase in a reflected clause (你觉得……) are theirs."""
    r = rules or load_rules()
    t = r["reply_quoted"].sub(_blank, normalize(text, r))
    if _structure_hit(t, r):
        return True
    clauses, sentences = _Marks(t), _Marks(t, _SENTENCE)
    limited = bool(r["reply_limits"].search(t))  # the reply states where confidentiality ends
    for rx, unless, unless_limited in r["harmful"]:
        if unless_limited and limited:
            continue  # a promise of secrecy qualified by those limits
        for m in rx.finditer(t):
            head = sentences.head(m.start())
            sentence = head + sentences.tail(m.start())
            if _negated(clauses, m.start(), r) or _reflected(sentence, len(head), r):
                continue
            if unless is None or not unless.search(sentence):
                return True
    return False
