"""The tests' own writers: the conftest dialogues in every format the readers take, written the way each
corpus publishes them (these are the tests' independent idea of each format, not the code under test)."""
import json

ROLE_TAGS = {  # format -> (client tag, counsellor tag)
    "sharegpt": ("human", "gpt"), "smilechat": ("client", "counselor"),
    "cpsycoune": ("求助者", "支持者"), "cpsycound": ("来访者", "心理咨询师"),
}


def _turns(d):
    return [m for m in d["messages"] if m["role"] != "system"]


def _system(d):
    return next((m["content"] for m in d["messages"] if m["role"] == "system"), None)


def _tag(fmt, role):
    return ROLE_TAGS[fmt][role == "assistant"]


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), "utf-8")
    return path


def sharegpt(d):
    return {"id": d["id"], "system": _system(d),
            "conversations": [{"from": _tag("sharegpt", m["role"]), "value": m["content"]} for m in _turns(d)]}


def alpaca(d):
    turns = _turns(d)
    pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    return {"system": _system(d), "instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"],
            "history": pairs}


def smilechat(d):
    return [{"role": _tag("smilechat", m["role"]), "content": m["content"], "annotation": []} for m in _turns(d)]


def cpsycoune(d):
    return [f"{_tag('cpsycoune', m['role'])}：{m['content']}" for m in _turns(d)]


def cpsycound(d):
    return "".join(f"{_tag('cpsycound', m['role'])}：{m['content']}\n\n" for m in _turns(d))


def write_format(folder, fmt, dialogues):
    """`dialogues` (conftest shape) as a file or folder in `fmt`; returns the path to train on."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "messages":
        return write_json(folder / "messages.json", dialogues)
    if fmt in ("sharegpt", "alpaca"):
        rows = [sharegpt(d) if fmt == "sharegpt" else alpaca(d) for d in dialogues]
        path = folder / f"{fmt}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        return path
    if fmt == "smilechat":
        return write_json(folder / "smilechat.json", [smilechat(d) for d in dialogues])
    root = folder / fmt  # one dialogue a file, as both CPsyCoun parts are published
    for i, d in enumerate(dialogues):
        if fmt == "cpsycoune":
            write_json(root / "Topic" / f"{i + 1}.json", cpsycoune(d))
        else:
            root.mkdir(parents=True, exist_ok=True)
            (root / f"case_{i}.txt").write_text(cpsycound(d), "utf-8")
    return root


FORMATS = ("messages", "sharegpt", "alpaca", "smilechat", "cpsycoune", "cpsycound")
