"""The interactive terminal chat: streaming replies, a history window, slash commands.

Works the same on a terminal and with piped stdin (so it can be scripted and tested).
"""
import contextlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime

from psydt_lora.files import atomic_write_text
from psydt_lora.inference.conversation import Turn, prepare_turn, window
from psydt_lora.inference.generation import stream_reply

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
    import array
    import fcntl
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
    rounds: list = field(default_factory=list)  # [(user, assistant)]

    def messages_for(self, user_text: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for u, a in self.rounds:
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        return window(msgs + [{"role": "user", "content": user_text}], self.history_turns)


class Chat:
    def __init__(self, model, tokenizer, settings, *, system, history_turns, context_limit,
                 safety=None, can_compare=False, out=None, input_fn=None):
        self.model, self.tok, self.settings = model, tokenizer, settings
        self.state = ChatState(system, history_turns)
        self.limit = context_limit
        self.safety = safety
        self.can_compare = can_compare
        self.out = out or sys.stdout
        self.input_fn = input_fn or input
        self.last_user = None

    def say(self, text="", end="\n"):
        self.out.write(text + end)
        self.out.flush()

    # -- one reply ------------------------------------------------------------------------------------
    def prepare(self, user_text) -> Turn:
        return prepare_turn(self.state.messages_for(user_text), safety=self.safety, history_turns=self.state.history_turns,
                            tokenizer=self.tok, max_new_tokens=self.settings.max_new_tokens, limit=self.limit,
                            enable_thinking=self.settings.enable_thinking)

    def generate(self, turn: Turn, label="助手", adapter=True):
        with typeahead_discarded(self):
            return self._generate(turn, label, adapter)

    def _generate(self, turn: Turn, label, adapter):
        crisis, ids = turn.crisis, turn.ids
        if turn.dropped:
            self.say(f"[历史过长，本轮省略了最早的 {turn.dropped} 轮对话]")
        stop = threading.Event()
        # a crisis turn's reply is shown only once it has been screened as a whole
        screen = self.safety.screen(crisis, turn.messages[-1]["content"]) if self.safety is not None else None
        if crisis:
            self.say(HELD, end="")
        else:
            self.say(f"{label}：", end="")
        progress = [0]

        def show(piece):
            visible = piece if screen is None else screen.feed(piece)
            if visible:
                self.out.write(visible)
            elif crisis:  # a sign of life while the held reply is written
                progress[0] += len(piece)
                if progress[0] >= HELD_DOT_CHARS:
                    progress[0] = 0
                    self.out.write("·")
            self.out.flush()

        with contextlib.nullcontext() if adapter else self.model.disable_adapter():
            reply, interrupted, hit_limit = stream_reply(self.model, self.tok, ids, self.settings, show, stop)
        if crisis:
            self.say()
            self.say(f"{label}：", end="")
        if screen is not None:
            rest, blocked = screen.finish(reply)
            if blocked:
                self.say()
                self.say(self.safety.screened_message())
                self.safety.record("reply_screened")
                reply = self.safety.safe_reply()
            elif rest:
                self.out.write(rest)
        self.say()
        if hit_limit and not interrupted:
            self.say(f"[回复在 --max_new_tokens {self.settings.max_new_tokens} 处被截断；可调大这个参数]")
        return reply, interrupted

    def reply(self, user_text):
        turn = self.prepare(user_text)
        if turn.crisis:
            self.safety.record("crisis_detected", turn.detection)
            self.say(self.safety.notice(turn.detection))  # resources first, before the model says anything
        reply, interrupted = self.generate(turn)
        if interrupted:
            self.say("[已中断：这一轮不计入历史]")
            return
        self.state.rounds.append((user_text, reply))
        self.last_user = user_text

    # -- commands -------------------------------------------------------------------------------------
    def command(self, line) -> bool:
        """Handle a command line; False means exit."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/quit", "exit", "quit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            self.state.rounds.clear()
            self.last_user = None
            self.say("[已清空对话历史]")
        elif name == "/system":
            if rest:
                self.state.system = rest
                self.say("[已设置系统提示词]")
            else:
                self.say(f"[当前系统提示词] {self.state.system or '（无）'}")
        elif name == "/history":
            if not self.state.rounds:
                self.say("[还没有对话]")
            for i, (u, a) in enumerate(self.state.rounds, 1):
                self.say(f"[{i}] 你：{u}\n    助手：{a}")
            if self.safety is not None and self.safety.guard is not None:
                self.say(f"[安全] {self.safety.guard_cost()}")
        elif name == "/save":
            if not rest:
                self.say("用法：/save 文件名.json")
            else:
                self.save(rest)
        elif name == "/compare":
            self.compare()
        else:
            self.say(f"未知命令 {name}，输入 /help 查看命令。")
        return True

    def save(self, path):
        transcript = {
            "saved": datetime.now().isoformat(timespec="seconds"),
            "system": self.state.system,
            "generation": self.settings.as_dict(),
            "rounds": [{"user": u, "assistant": a} for u, a in self.state.rounds],
        }
        if self.safety is not None:
            transcript["safety_events"] = self.safety.events
        try:
            atomic_write_text(path, json.dumps(transcript, ensure_ascii=False, indent=2) + "\n", mode=0o600)
        except OSError as err:
            self.say(f"[保存失败] {path}：{err.strerror}")
            return
        self.say(f"[已保存 {len(self.state.rounds)} 轮对话到 {os.path.abspath(path)}]")

    def compare(self):
        if not self.can_compare:
            self.say("[/compare 需要加载了 LoRA 且未合并的模型（不要用 --merge_lora / --no_adapter）]")
            return
        if not self.state.rounds:
            self.say("[还没有可以对比的回复]")
            return
        user_text, lora_reply = self.state.rounds[-1]
        saved = self.state.rounds.pop()  # the base model answers the same history
        try:
            self.say(f"[LoRA] 见上面的回复（{len(lora_reply)} 字）；下面是基础模型对同一句话的回答：")
            self.generate(self.prepare(user_text), label="[基础模型]", adapter=False)
        finally:
            self.state.rounds.append(saved)  # the base reply is not added to the history

    # -- the loop -----------------------------------------------------------------------------------
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
                if not self.command(line):
                    self.say("[再见]")
                    return
                continue
            self.reply(line)
