"""Whole sessions: a simulated client (any OpenAI-compatible endpoint, playing a profile) talks with the
counsellor (any endpoint: this project's `--mode serve`, vLLM with the adapter, a base model) until

  - the client ends its message with `[/END]` (taken out of the transcript; ended by the client),
  - the counsellor says goodbye (GOODBYE below: a short, deliberately conservative list), or
  - `max_turns` is reached (a turn is one client message and the counsellor's reply).

Sessions run concurrently, the turns of one session in order. Every turn goes through the endpoint cache,
its key holding the transcript so far, so a rerun sends nothing and a killed run resumes at the next turn
with each turn generated once. The client's seed is fixed per profile (and repeat): two counsellors meet
the same client.
"""
import hashlib
import re
import time

from psydt_lora.prompt import strip_think
from psydt_lora.judge.endpoint import in_parallel
from psydt_lora.judge.profiles import Profile
from psydt_lora.judge.rubric import format_history

END = "[/END]"
# The counsellor's farewell: 再见 / 拜拜 / 下次见, "今天(就/先)到这里", "期待下次(见面/咨询)". Words such as 保重 or
# 下次咨询 alone are not in it: counsellors say them in the middle of sessions too.
GOODBYE = re.compile(r"再见|拜拜|下次见|今天(的咨询|的谈话|我们)?(就|先)?(聊|谈)?到这里|我们先(聊|谈)?到这里?|期待(我们)?下次(见面|咨询|会谈|再聊)")
START = "（咨询开始了。请你先开口，说说今天为什么来。）"
ENDINGS = {"client": "来访者结束（[/END]）", "counsellor": "咨询师道别", "max_turns": "达到轮数上限", "error": "请求失败（重跑会续上）"}

CLIENT_SYSTEM = (
    "你在参加一次心理咨询的角色扮演：你扮演来访者，和你说话的是心理咨询师。\n\n"
    "【你的情况】\n{profile}\n\n【你的态度】{attitude}\n\n{disclosure}"
    "【要求】\n"
    "1. 始终是来访者，用第一人称说你自己的事；不给对方建议，不分析对方，不变成咨询师，也不替咨询做总结。\n"
    "2. 像真实的来访者那样说话：每次一到三句，口语，不用列表和标题。\n"
    "3. 慢慢讲：不要一开口就把情况全说完，对方问到了再多说一点。\n"
    "4. 守住你自己的故事和态度：不要因为对方说得有道理就马上同意、马上好转；只有真的感到被理解，才稍稍松动。\n"
    "5. 不编造和【你的情况】矛盾的事。\n"
    "6. 觉得这次谈话可以结束了（谈得差不多了，或者你不想再谈了），就在最后一条消息的末尾写上 [/END]。\n"
    "只输出你作为来访者要说的话。"
)
ATTITUDE_TEXT = {
    "cooperative": "合作：你愿意谈，会回答问题；但你的困扰是真的，不会几句话就消失。",
    "ambivalent": "矛盾：你一半想得到帮助，一半怀疑咨询有没有用；时而敞开，时而退缩，常说“也许吧”“我也不知道”。",
    "resistant": "抗拒：你不太相信咨询，回答简短，常反驳或岔开话题，讨厌被说教；对方得先赢得你的信任，你才多说一点。",
}
DISCLOSE_NOW = "【这一次要说的】在这条消息里，第一次说出你一直没说的事：{text}。用你自己的话，可以犹豫，但要让对方听得出来。\n\n"
DISCLOSED = "【你已经说出的事】{text}。之后可以接着谈，也可以回避，但不要否认说过。\n\n"


def client_seed(base: int, profile_id: str, repeat: int) -> int:
    """The client's sampling seed for one profile and repeat: the same for every counsellor."""
    digest = hashlib.sha256(f"{profile_id}#{repeat}".encode("utf-8")).digest()
    return (base + int.from_bytes(digest[:4], "big")) % 2 ** 31


def client_messages(profile: Profile, transcript: list[dict], turn: int) -> list[dict]:
    """What the client model is sent for its `turn`-th message: our prompt with the profile, then the session
    from the client's side (the counsellor speaks as "user"). The disclosure enters the prompt only at its turn."""
    disclosure = ""
    if profile.disclosure and turn == profile.disclose_at:
        disclosure = DISCLOSE_NOW.format(text=profile.disclosure)
    elif profile.disclosure and turn > profile.disclose_at:
        disclosure = DISCLOSED.format(text=profile.disclosure)
    attitude = ATTITUDE_TEXT.get(profile.attitude, "按【你的情况】里描述的样子说话。")
    system = CLIENT_SYSTEM.format(profile=profile.profile, attitude=attitude, disclosure=disclosure)
    flipped = [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]} for m in transcript]
    return [{"role": "system", "content": system}, *(flipped or [{"role": "user", "content": START}])]


def take_end(text: str) -> tuple[str, bool]:
    """(the message without a trailing [/END], whether the client ended the session)."""
    body = text.rstrip()
    if body.endswith(END):
        return body[: -len(END)].rstrip(), True
    return body, False


def says_goodbye(reply: str) -> bool:
    return bool(GOODBYE.search(reply))


def run_session(profile: Profile, repeat: int, client, counsellor, system: str | None, max_turns: int, seed: int) -> dict:
    """One session, turn after turn; a request that fails for good ends it as "error" (a rerun continues
    from the cache)."""
    transcript, ended, error = [], "max_turns", None
    for turn in range(1, max_turns + 1):
        if turn == 1 and profile.opening:
            text, done = take_end(profile.opening)
        else:
            answer = client.ask(f"client:{profile.id}#{repeat}", client_messages(profile, transcript, turn), seed)
            if answer.error:
                ended, error = "error", f"来访者模型：{answer.error}"
                break
            text, done = take_end(strip_think(answer.text or ""))
        if text or not done:
            transcript.append({"role": "user", "content": text or "（沉默）"})
        if done:
            ended = "client"
            break
        head = [{"role": "system", "content": system}] if system else []  # none: the counsellor's server uses its own
        reply = counsellor.ask(f"counsellor:{profile.id}#{repeat}", [*head, *transcript])
        if reply.error:
            ended, error = "error", f"咨询师模型：{reply.error}"
            break
        transcript.append({"role": "assistant", "content": strip_think(reply.text or "")})
        if says_goodbye(transcript[-1]["content"]):
            ended = "counsellor"
            break
    return {"profile": profile.id, "repeat": repeat, "seed": seed, "kind": profile.kind, "topic": profile.topic,
            "attitude": profile.attitude, "risk": profile.risk, "disclose_at": profile.disclose_at,
            "turns": sum(1 for m in transcript if m["role"] == "user"), "ended_by": ended, "error": error,
            "messages": transcript}


def run_sessions(profiles: list[Profile], client, counsellor, system: str, max_turns: int, repeats: int = 1,
                 base_seed: int = 0, progress: bool = True) -> tuple[list[dict], float]:
    """Every (profile, repeat) session, `min(client, counsellor concurrency)` at a time; (sessions in
    profile order, seconds)."""
    jobs = [(p, r) for p in profiles for r in range(repeats)]
    started = time.time()
    results = in_parallel(lambda job: run_session(job[0], job[1], client, counsellor, system, max_turns,
                                                  client_seed(base_seed, job[0].id, job[1])),
                          jobs, min(client.config.concurrency, counsellor.config.concurrency),
                          f"会谈（{counsellor.config.model}）", "场", progress)
    seconds = time.time() - started
    for endpoint in {id(client): client, id(counsellor): counsellor}.values():
        endpoint.usage.seconds += seconds  # the wall time both spent in these sessions
    return results, seconds


def numbered(messages: list[dict]) -> list[dict]:
    """The transcript with each message marked by its turn, for the judge."""
    out, turn = [], 0
    for m in messages:
        turn += m["role"] == "user"
        out.append({"role": m["role"], "content": f"（第 {turn} 轮）{m['content']}"})
    return out


def transcript_text(messages: list[dict]) -> str:
    return format_history(numbered(messages)) or "（空会谈）"
