"""The one reply screen: chat, serve and test all pass a reply through it (chat and serve get it from
`inference.conversation.reply_screen`, test mode through `Safety.screened`).

While a reply streams, text is released `holdback` characters behind the model so a harmful phrase (the
lexicon's check) is caught before it is shown, and held -- not yet blocked -- while the sentence may still
turn it safe; on a crisis turn (`hold`) nothing is shown until the reply is complete. When it is complete
the whole reply is judged once by every layer (the guard or the base model too, when there is one); a
blocked reply is replaced by the safe reply. With the safety layer off
the reply passes through the same interface unchanged (`PassThrough`)."""
from dataclasses import dataclass

from psydt_lora.safety.rules import harmful_reply


@dataclass
class Finished:
    rest: str  # what is still to show of the model's reply ("" when blocked)
    blocked: bool
    replacement: str = ""  # shown instead of a blocked reply
    tail: str = ""  # for a stream: what to send after what was already sent

    def fields(self) -> dict:
        """A batch-test result's screening fields: the raw reply stays the scored one."""
        return {"screened": True, "screened_response": self.replacement} if self.blocked else {"screened": False}


class ReplyScreen:
    def __init__(self, judge, replacement: str, hold: bool, holdback: int = 16):
        self.judge = judge  # the whole reply -> harmful?
        self.replacement = replacement
        self.hold, self.holdback = hold, holdback
        self.text = ""
        self.shown = 0
        self.blocked = False
        self.held = False  # a prefix read as harmful: nothing more is shown until `finish`

    def feed(self, piece: str) -> str:
        """The part of the reply that may be shown now. Once the text so far reads as harmful, nothing more is shown
        while it streams, and nothing is decided either: `finish` judges the whole reply, whose rest may clear it
        (我会替你保密，但如果你有危险……) -- then the held part is shown, else the safe reply."""
        self.text += piece
        if self.held or self.hold or harmful_reply(self.text):
            self.held = True
            return ""
        upto = max(self.shown, len(self.text) - self.holdback)
        out, self.shown = self.text[self.shown:upto], upto
        return out

    def finish(self, reply: str | None = None) -> Finished:
        """Judge the whole reply (by default the text fed so far)."""
        reply = self.text if reply is None else reply
        if self.blocked or self.judge(reply):
            self.blocked = True
            return Finished("", True, self.replacement, ("\n" if self.shown else "") + self.replacement)
        rest = self.text[self.shown:]
        self.shown = len(self.text)
        return Finished(rest, False, tail=rest)


class PassThrough:
    """The screen of a disabled safety layer: everything is shown as it comes, nothing is blocked."""
    blocked = False

    def __init__(self):
        self.text = ""

    def feed(self, piece: str) -> str:
        self.text += piece
        return piece

    def finish(self, reply: str | None = None) -> Finished:
        return Finished("", False)
