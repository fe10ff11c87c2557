"""Samples are exactly the chat prompt: labels on the reply and its <|im_end|> only."""

import json

import pytest

from conftest import DIALOGUES, REAL_SAMPLE, SHAPED_TEST, SHAPED_TRAIN, SYSTEM, require
from psydt_lora.data.dialogues import Dialogue, read_dialogues
from psydt_lora.data.sample_cache import load_or_build
from psydt_lora.data.sample_types import WholeDialogue
from psydt_lora.data.samples import IGNORE_INDEX, build_samples, build_training_samples
from psydt_lora.prompt import fit_history, prompt_ids, render_prompt


def dialogue(messages, index=0):
    return Dialogue(index=index, id=index, tag=None, messages=messages)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_hand_written_dialogue_has_exact_labels(tiny_tokenizer):
    d = dialogue(DIALOGUES[0]["messages"])
    samples, stats = build_samples([d], tiny_tokenizer, max_length=2048)
    assert [s.message_index for s in samples] == [2, 4]
    # reply 2: everything up to the empty think block is context, then reply + <|im_end|>
    context = (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n我最近睡不好，总是很焦虑。<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    reply = "听起来你最近压力很大，能说说是什么让你焦虑吗？<|im_end|>"
    s = samples[0]
    assert s.input_ids == ids(tiny_tokenizer, context + reply)
    assert s.labels == [IGNORE_INDEX] * len(ids(tiny_tokenizer, context)) + ids(tiny_tokenizer, reply)
    # reply 4: the earlier reply is history without a think block; only the last reply is learned
    s = samples[1]
    text = tiny_tokenizer.decode(s.input_ids)
    assert text.count("<think>") == 1 and text.endswith("我们一起看看哪些事情最重要。<|im_end|>")
    learned = tiny_tokenizer.decode([t for t in s.labels if t != IGNORE_INDEX])
    assert learned == "工作量大确实让人紧张，我们一起看看哪些事情最重要。<|im_end|>"
    assert stats.samples == 2 and stats.supervised_tokens == sum(1 for s in samples for t in s.labels if t >= 0)


def independent(tok, messages, k):
    """Sample for the reply at message k, straight from apply_chat_template."""
    full = tok.apply_chat_template(messages[: k + 1], tokenize=False, enable_thinking=False)
    assert full.endswith("<|im_end|>\n")
    ctx = tok.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert full.startswith(ctx)
    n = len(ids(tok, ctx))
    all_ids = ids(tok, full[: -len("\n")])
    return all_ids, [IGNORE_INDEX] * n + all_ids[n:]


@pytest.mark.parametrize("path", [REAL_SAMPLE, SHAPED_TRAIN])
def test_every_turn_of_real_dialogues_matches_apply_chat_template(real_tokenizer, path):
    dialogues, _ = read_dialogues(require(path))
    samples, stats = build_samples(dialogues, real_tokenizer, max_length=100_000)
    assert stats.samples == sum(len(d.targets()) for d in dialogues)
    by_index = {d.index: d for d in dialogues}
    for s in samples:
        want_ids, want_labels = independent(real_tokenizer, by_index[s.dialogue_index].messages, s.message_index)
        assert s.input_ids == want_ids
        assert s.labels == want_labels


def test_real_record_sizes(real_tokenizer):
    dialogues, _ = read_dialogues(require(REAL_SAMPLE))
    samples, stats = build_samples(dialogues, real_tokenizer, max_length=2048)
    # the figures the corpus notes give for this record
    assert (stats.samples, stats.tokens, stats.supervised_tokens) == (15, 13094, 390)


def test_eval_items_train_only_their_final_reply(real_tokenizer):
    items, _ = read_dialogues(require(SHAPED_TEST))
    samples, _ = build_samples(items, real_tokenizer, max_length=100_000, last_reply_only=True)
    assert len(samples) == len(items)
    for s, item in zip(samples, items):
        assert s.message_index == len(item.messages) - 1
        want_ids, want_labels = independent(real_tokenizer, item.messages, s.message_index)
        assert (s.input_ids, s.labels) == (want_ids, want_labels)


def long_dialogue(rounds=12):
    msgs = [{"role": "system", "content": SYSTEM}]
    for r in range(rounds):
        msgs.append({"role": "user", "content": f"第{r}轮：我今天心情很差，有点累。"})
        msgs.append({"role": "assistant", "content": f"第{r}轮回复：谢谢你告诉我，我们慢慢说。"})
    return msgs


def test_truncation_keeps_system_and_reply_and_drops_oldest_whole_rounds(tiny_tokenizer):
    msgs = long_dialogue()
    samples, stats = build_samples([dialogue(msgs)], tiny_tokenizer, max_length=200)
    assert stats.truncated_history_samples > 0 and stats.truncated_reply_samples == 0
    for s in samples:
        assert len(s.input_ids) <= 200
        # the context is exactly the rendering of system + the most recent whole rounds
        context = s.input_ids[: s.labels.index(next(t for t in s.labels if t != IGNORE_INDEX))]
        kept = None
        for start in range(1, s.message_index, 2):
            if ids(tiny_tokenizer, render_prompt(tiny_tokenizer, msgs[:1] + msgs[start:s.message_index])) == context:
                kept = start
                break
        assert kept is not None, "context is not system + whole recent rounds"
        # and it is the longest such context that fits
        if kept > 1:
            longer = ids(tiny_tokenizer, render_prompt(tiny_tokenizer, msgs[:1] + msgs[kept - 2:s.message_index]))
            reply_len = sum(1 for t in s.labels if t != IGNORE_INDEX)
            assert len(longer) + reply_len > 200
        learned = tiny_tokenizer.decode([t for t in s.labels if t != IGNORE_INDEX])
        assert learned == msgs[s.message_index]["content"] + "<|im_end|>"


def test_reply_end_is_cut_only_when_the_last_round_alone_does_not_fit(tiny_tokenizer):
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "谢谢" * 60}]
    context_len = len(ids(tiny_tokenizer, render_prompt(tiny_tokenizer, msgs[:2])))
    samples, stats = build_samples([dialogue(msgs)], tiny_tokenizer, max_length=context_len + 10)
    assert stats.truncated_reply_samples == 1
    assert len(samples[0].input_ids) == context_len + 10
    assert samples[0].labels[context_len:] == samples[0].input_ids[context_len:]
    # context alone too long: the sample is dropped and counted, not silently mangled
    samples, stats = build_samples([dialogue(msgs)], tiny_tokenizer, max_length=context_len - 1)
    assert len(samples) == 0 and stats.dropped_too_long_samples == 1


def test_a_history_of_exactly_the_limit_is_kept_whole_and_one_token_more_drops_the_oldest_round(tiny_tokenizer):
    """The round-fitting boundary, in training and in chat: a context + reply of exactly max_length tokens
    keeps every round; with one token less room the oldest round goes (and only it)."""
    msgs = long_dialogue(rounds=3)
    last = len(msgs) - 1
    whole = prompt_ids(tiny_tokenizer, msgs[:last])
    reply = len(ids(tiny_tokenizer, msgs[last]["content"])) + 1  # + <|im_end|>
    exact = len(whole) + reply
    samples, stats = build_samples([dialogue(msgs)], tiny_tokenizer, max_length=exact, last_reply_only=True)
    assert samples[0].input_ids[: len(whole)] == whole and len(samples[0].input_ids) == exact
    assert stats.truncated_history_samples == 0
    samples, stats = build_samples([dialogue(msgs)], tiny_tokenizer, max_length=exact - 1, last_reply_only=True)
    assert samples[0].input_ids[: -reply] == prompt_ids(tiny_tokenizer, msgs[:1] + msgs[3:last])
    assert stats.dropped_rounds == 1
    # chat's history: the same rule through prompt.fit_history
    assert fit_history(tiny_tokenizer, msgs[:last], len(whole)) == (whole, 0)
    kept, dropped = fit_history(tiny_tokenizer, msgs[:last], len(whole) - 1)
    assert dropped == 1 and kept == prompt_ids(tiny_tokenizer, msgs[:1] + msgs[3:last])


def test_consecutive_replies_use_the_exact_rendering(tiny_tokenizer):
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
            {"role": "assistant", "content": "今天想聊点什么？"}]
    samples, _ = build_samples([dialogue(msgs)], tiny_tokenizer, max_length=512)
    assert len(samples) == 2
    ctx = ids(tiny_tokenizer, render_prompt(tiny_tokenizer, msgs[:2]))
    assert samples[1].input_ids[: len(ctx)] == ctx
    assert samples[1].labels[: len(ctx)] == [IGNORE_INDEX] * len(ctx)


def test_a_one_reply_dialogue_reads_back_from_the_cache_as_built(tiny_tokenizer, tmp_path):
    """Each kind of sample keeps its own type through the cache: a whole dialogue with a single reply stays
    a WholeDialogue (its reply lists are not mistaken for one per_turn sample's indices)."""
    train = tmp_path / "train.json"
    train.write_text(json.dumps(DIALOGUES, ensure_ascii=False), "utf-8")  # the fingerprint reads the file
    dialogues = [dialogue(DIALOGUES[0]["messages"][:3]), dialogue(DIALOGUES[1]["messages"], 1)]
    build = lambda: build_training_samples(dialogues, tiny_tokenizer, 2048, "dialogue")  # noqa: E731
    said = []
    built, _ = load_or_build(train, tiny_tokenizer, {"mode": "dialogue"}, build, say=said.append)
    cached, _ = load_or_build(train, tiny_tokenizer, {"mode": "dialogue"}, build, say=said.append)
    assert "cache hit" in said[-1]
    assert [type(s) for s in cached] == [WholeDialogue, WholeDialogue]
    assert [s.record() for s in cached] == [s.record() for s in built]
    assert [s.turn_indices for s in cached] == [[0], [0, 1]]
