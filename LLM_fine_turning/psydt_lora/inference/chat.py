"""The interactive terminal chat: streaming replies, a history window, slash commands.

Works the same on a terminal and with piped stdin (so it can be scripted and tested). On a terminal, input()
has line editing and an in-memory history through the standard library's readline (arrow keys move the
cursor instead of sending ^[[D); the history is never written to a file.
"""
import array
import contextlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime

try:  # line editing for input() on a terminal; absent on Windows' own Python, where the console edits lines itself
    import readline  # noqa: F401  (importing it is what switches it on)
except ImportError:
    readline = None

from psydt_lora.files import atomic_write_text
from psydt_lora.inference.conversation import Turn, prepare_turn, reply_screen
from psydt_lora.inference.generation import stream_reply
from psydt_lora.safety.session import DisabledSafety

DISCLAIMER = "本工具用于研究和教学，模型的回复不能替代专业心理咨询或医疗。"
HELP = """命令：
  /help           显示本帮助
  /reset          清空对话历史
  /system 文本    设置系统提示词（不带文本则显示当前的）
  /history        显示对话历史
  /save 文件名    把对话保存为 JSON（仅本人可读）
  /compare        用基础模型（不加 LoRA）重新回答上一句，对比两个回复
  /exit, /quit    退出（也可以输入 exit / quit，或按 Ctrl-D）
回复生成时按 Ctrl-C 只会打断这次回复；生成时键入的内容会被丢弃，请等回复结束再输入。"""
HELD = "正在生成…（安全检查中，检查完再显示）"
HELD_DOT_CHARS = 20  # one dot per this many characters of a held reply
REPLACED = "[这条回复可能包含不安全的内容，已被安全过滤，换成了下面这段（历史、/save 和 /compare 里也是这段）]"
REPLACED_MARK = "（安全过滤后换上的回复）"


@contextlib.contextmanager
def typeahead_discarded(chat):
    """While a reply streams on a terminal: keys typed are not echoed into the reply, and are discarded
    afterwards rather than sent as the next message (we say so when there were any)."""
    try:
        import termios

        fd = sys.stdin.fileno()
    except (ImportError, AttributeError, OSError, ValueError):  # Windows, or stdin replaced (tests, notebooks)
        termios = fd = None
    if termios is None or fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        pending = _pending_bytes(fd)
        termios.tcflush(fd, termios.TCIFLUSH)
        termios.tcsetattr(fd, termios.TCSANOW, saved)
        if pending:
            chat.say("[生成回复时输入的内容已丢弃，请重新输入]")


def _pending_bytes(fd) -> int:
    import fcntl  # POSIX only, like termios: imported where a terminal is known to be there
    import termios

    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return 0
    return buf[0]


@dataclass
class ChatState:
    system: str | None
    history_turns: int
    rounds: list = field(default_factory=list)  # [(user, assistant)]: the assistant's text as it was shown
    replaced: set = field(default_factory=set)  # indexes of rounds whose reply the screen replaced

    def add(self, user_text: str, reply: str, replaced: bool):
        if replaced:
            self.replaced.add(len(self.rounds))
        self.rounds.append((user_text, reply))

    def clear(self):
        self.rounds.clear()
        self.replaced.clear()

    def messages_for(self, user_text: str) -> list[dict]:
        """The whole conversation ending with `user_text` (prepare_turn applies the history window)."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for u, a in self.rounds:
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        return msgs + [{"role": "user", "content": user_text}]


class TerminalReply:
    """One reply on the terminal: streamed as it is screened, or -- on a crisis turn -- held until the whole
    reply has been screened, with a dot now and then as a sign of life."""

    def __init__(self, chat, turn: Turn, label: str):
        self.chat, self.turn, self.label = chat, turn, label
        self.screen = reply_screen(chat.safety, turn)
        self.progress = 0

    def show(self, piece: str):
        out = self.chat.out
        visible = self.screen.feed(piece)
        if visible:
            out.write(visible)
        elif self.turn.crisis:
            self.progress += len(piece)
            if self.progress >= HELD_DOT_CHARS:
                self.progress = 0
                out.write("·")
        out.flush()

    def run(self, adapter: bool) -> tuple[str, bool, bool]:
        """(the reply as shown and kept in the history, interrupted, replaced by the screen)."""
        chat, turn = self.chat, self.turn
        if turn.dropped:
            chat.say(f"[历史过长，本轮省略了最早的 {turn.dropped} 轮对话]")
        chat.say(HELD if turn.crisis else f"{self.label}：", end="")
        with contextlib.nullcontext() if adapter else chat.model.disable_adapter():
            done = stream_reply(chat.model, chat.tok, turn.ids, chat.settings, self.show, threading.Event())
        reply, interrupted, hit_limit = done.text, done.interrupted, done.hit_limit
        if turn.crisis:
            chat.say()
            chat.say(f"{self.label}：", end="")
        reply, replaced = self.screened(reply)
        chat.say()
        if hit_limit and not interrupted:
            chat.say(f"[回复在 --max_new_tokens {chat.settings.max_new_tokens} 处被截断；可调大这个参数]")
        return reply, interrupted, replaced

    def screened(self, reply: str) -> tuple[str, bool]:
        """(what is shown of the reply, whole, and kept; whether the screen replaced it). A replaced reply is
        shown as it is kept: the replacement, under the label, after a line saying so."""
        done = self.screen.finish(reply)
        if done.blocked:
            self.chat.say()
            self.chat.say(REPLACED)
            self.chat.say(f"{self.label}：{done.replacement}", end="")
            self.chat.safety.record("reply_screened")
            return done.replacement, True
        if done.rest:
            self.chat.out.write(done.rest)
        return reply, False


class Chat:
    def __init__(self, model, tokenizer, settings, *, system, history_turns, context_limit,
                 safety=None, can_compare=False, out=None, input_fn=None):
        self.model, self.tok, self.settings = model, tokenizer, settings
        self.state = ChatState(system, history_turns)
        self.limit = context_limit
        self.safety = safety or DisabledSafety()  # a Safety, or the disabled one (--safety off)
        self.can_compare = can_compare
        self.out = out or sys.stdout
        self.input_fn = input_fn or input
        self.commands = Commands(self)

    def say(self, text="", end="\n"):
        self.out.write(text + end)
        self.out.flush()

    def prepare(self, user_text) -> Turn:
        return prepare_turn(self.state.messages_for(user_text), safety=self.safety, history_turns=self.state.history_turns,
                            tokenizer=self.tok, max_new_tokens=self.settings.max_new_tokens, limit=self.limit,
                            enable_thinking=self.settings.enable_thinking)

    def generate(self, turn: Turn, label="助手", adapter=True):
        with typeahead_discarded(self):
            return TerminalReply(self, turn, label).run(adapter)

    def reply(self, user_text):
        turn = self.prepare(user_text)
        if turn.crisis:
            self.safety.record("crisis_detected", turn.detection)
            self.say(self.safety.notice(turn.detection))  # resources first, before the model says anything
        if turn.overflow:  # even this message alone leaves no room for a reply
            self.say(f"[这条消息太长：提示有 {len(turn.ids)} 个 token，加上回复的 --max_new_tokens {self.settings.max_new_tokens} "
                     f"超过了上下文长度 {self.limit}。请缩短后重发；这一轮不计入历史。]")
            return
        reply, interrupted, replaced = self.generate(turn)
        if interrupted:
            self.say("[已中断：这一轮不计入历史]")
            return
        self.state.add(user_text, reply, replaced)

    def loop(self):
        while True:
            try:
                line = self.input_fn("\n你：")
            except EOFError:
                self.say("\n[再见]")
                return
            except KeyboardInterrupt:
                self.say("\n（输入 /exit 退出）")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/") or line in ("exit", "quit"):
                if not self.commands.run(line):
                    self.say("[再见]")
                    return
                continue
            self.reply(line)


class Commands:
    """The slash commands of a chat."""

    def __init__(self, chat: Chat):
        self.chat = chat

    def run(self, line) -> bool:
        """Handle a command line; False means exit."""
        chat, state = self.chat, self.chat.state
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/quit", "exit", "quit"):
            return False
        if name == "/help":
            chat.say(HELP)
        elif name == "/reset":
            state.clear()
            chat.say("[已清空对话历史]")
        elif name == "/system":
            if rest:
                state.system = rest
                chat.say("[已设置系统提示词]")
            else:
                chat.say(f"[当前系统提示词] {state.system or '（无）'}")
        elif name == "/history":
            self.history()
        elif name == "/save" and not rest:
            chat.say("用法：/save 文件名.json")
        elif name == "/save":
            self.save(rest)
        elif name == "/compare":
            self.compare()
        else:
            chat.say(f"未知命令 {name}，输入 /help 查看命令。")
        return True

    def history(self):
        chat = self.chat
        if not chat.state.rounds:
            chat.say("[还没有对话]")
        for i, (u, a) in enumerate(chat.state.rounds, 1):
            mark = REPLACED_MARK if i - 1 in chat.state.replaced else ""
            chat.say(f"[{i}] 你：{u}\n    助手：{a}{mark}")
        cost = chat.safety.guard_cost()
        if cost:
            chat.say(f"[安全] {cost}")

    def save(self, path):
        chat = self.chat
        transcript = {
            "saved": datetime.now().isoformat(timespec="seconds"),
            "system": chat.state.system,
            "generation": chat.settings.as_dict(),
            "rounds": [{"user": u, "assistant": a, "screened": i in chat.state.replaced}
                       for i, (u, a) in enumerate(chat.state.rounds)],
            "safety_events": chat.safety.events,
        }
        try:
            atomic_write_text(path, json.dumps(transcript, ensure_ascii=False, indent=2) + "\n", mode=0o600)
        except OSError as err:
            chat.say(f"[保存失败] {path}：{err.strerror}")
            return
        chat.say(f"[已保存 {len(chat.state.rounds)} 轮对话到 {os.path.abspath(path)}]")

    def compare(self):
        chat = self.chat
        if not chat.can_compare:
            chat.say("[/compare 需要加载了 LoRA 且未合并的模型（不要用 --merge_lora / --no_adapter）]")
            return
        if not chat.state.rounds:
            chat.say("[还没有可以对比的回复]")
            return
        user_text, lora_reply = chat.state.rounds[-1]
        replaced = len(chat.state.rounds) - 1 in chat.state.replaced
        saved = chat.state.rounds.pop()  # the base model answers the same history
        try:
            chat.say("[LoRA] 上面的回复被安全过滤，换成了安全回复（原回复没有保留，无法对比）；下面是基础模型对同一句话的回答："
                     if replaced else f"[LoRA] 见上面的回复（{len(lora_reply)} 字）；下面是基础模型对同一句话的回答：")
            chat.generate(chat.prepare(user_text), label="[基础模型]", adapter=False)
        finally:
            chat.state.rounds.append(saved)  # the base reply is not added to the history
