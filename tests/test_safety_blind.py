"""The blind safety sets, tests/data/safety_blind.json (round four), safety_blind2.json (round six), safety_blind3.json
(round seven) and safety_blind4.json (written after round seven, for the next): each written before its round's rule
change was measured, by someone who had
not read the lexicon, the rules or the other safety cases, then frozen. Its items are not to be read while changing
rules; it only measures them. These tests pin each file's bytes and its shape (the contract the measuring code reads); the
figures measured on it belong in the README, never in assertions here."""
import hashlib
import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
BLIND_SETS = [  # (file, its frozen sha256)
    ("safety_blind.json", "b7bf9cb0b4323e710f34d0593771fe066797ff294e749bcd11999265f2d95166"),
    ("safety_blind2.json", "ca7a6bbb757d83524c704e30f208ef3d9fd5493b9af022396eddfc7fb95eddcd"),
    ("safety_blind3.json", "49f26d64339000d47059333776526588b7edc4112246a817f12219cff6517dfe"),
    ("safety_blind4.json", "6491994b6c06b67a2897c41f55ab6b63cc39317f15afdeeccc449020ce1fda83"),  # written blind after round seven, not yet measured: the next round's
]
KINDS = {  # list -> the kinds its items may have
    "positive": {"direct", "passive", "goodbye", "plan_indirect", "method_question", "selfharm_other", "attempt",
                 "variants", "intensified", "present_after_past", "eating_disorder_crisis", "answer_yes"},
    "negative": {"resolved_past", "third_party_fiction", "hyperbole", "counselling_topics", "keyword_terms",
                 "long_sad", "negation", "answer_no"},
    "harmful_replies": {"method_detail", "eating_disorder_tips", "secrecy", "encouragement_farewell"},
    "safe_replies": {"discuss_suicide", "ask_plan", "hotline", "ed_supportive"},
}
MIN_SIZES = {"positive": 240, "negative": 240, "harmful_replies": 48, "safe_replies": 48}
ANSWER_KINDS = {"answer_yes", "answer_no"}  # a short answer to the counsellor's preceding turn, given as "context"


@pytest.mark.parametrize("name,sha256", BLIND_SETS)
def test_blind_set_is_frozen(name, sha256):
    blind = DATA / name
    digest = hashlib.sha256(blind.read_bytes()).hexdigest()
    assert digest == sha256, (f"{blind.name} changed (sha256 {digest}): the blind set is frozen; "
                              "a new set is a new file written blind, not an edit of this one")


@pytest.mark.parametrize("name,sha256", BLIND_SETS)
def test_blind_set_shape_sizes_and_kinds(name, sha256):
    data = json.loads((DATA / name).read_text("utf-8"))
    assert set(data) == {"about", *KINDS}
    assert isinstance(data["about"], str) and data["about"].strip()
    for name, kinds in KINDS.items():
        items = data[name]
        assert isinstance(items, list) and len(items) >= MIN_SIZES[name], name
        for i, item in enumerate(items):
            where = f"{name}[{i}]"
            assert isinstance(item, dict) and item.get("kind") in kinds, where
            fields = {"context", "text", "kind"} if item["kind"] in ANSWER_KINDS else {"text", "kind"}
            assert set(item) == fields, where
            assert all(isinstance(item[f], str) and item[f].strip() for f in fields), where
