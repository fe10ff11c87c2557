"""Ctrl-C (SIGINT) and SIGTERM (a cluster's preemption) during training: finish the step, save one
checkpoint, stop -- and give the process its handlers back however training ends.

Handlers left behind outlive the run: a fork `Pool` started later in the same process (the parallel
template rendering) inherits them, its workers only record `Pool.terminate()`'s SIGTERM, and `join()`
waits for ever. So they are installed for `trainer.train()` alone (`StopOnSignal.installed`).

Under `python train.py 2>&1 | tee log`, Ctrl-C reaches `tee` too: it ends, and every later write to the pipe
raises BrokenPipeError. `console_outlives_its_pipe` keeps the run going to its checkpoint: the first write
that finds the pipe gone points that descriptor at /dev/null, and the run goes on silently."""
import contextlib
import os
import signal
import sys

from psydt_lora.train.ranks import is_main_process, world_size

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def handlers(handler):
    """`handler` for SIGINT and SIGTERM inside the block; the previous ones back on every way out (return,
    exception, a second Ctrl-C's KeyboardInterrupt)."""
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        for s in STOP_SIGNALS:
            signal.signal(s, handler)
        yield
    finally:
        for s, previous in before.items():
            signal.signal(s, previous)


class PipeSafeStream:
    """A text stream (stdout / stderr) whose writes never raise BrokenPipeError: the first one that would sends
    the descriptor to /dev/null (so the original stream, tqdm's and C-level writes and the interpreter's last
    flush all succeed) and the text is dropped. Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self):
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self._stream.flush()  # what was buffered goes to /dev/null now

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def console_outlives_its_pipe():
    """sys.stdout and sys.stderr as PipeSafeStreams inside the block (the whole training program)."""
    before = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PipeSafeStream(sys.stdout), PipeSafeStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before


def tell(message: str) -> None:
    """A line from a signal handler: to stderr (the log of a `2>&1 | tee` run keeps it), never an exception
    (a handler's exception would end the step it interrupted, before the checkpoint)."""
    with contextlib.suppress(OSError, ValueError):
        print(message, file=sys.stderr, flush=True)


def ignore_sigterm_while_leaving() -> None:
    """A launcher's rank that stopped on a signal: torchrun sends SIGTERM to the other ranks as soon as one
    exits; arriving during interpreter shutdown, when Python's handlers are gone, it would turn this rank's
    agreed exit code into -15. Only under a launcher, whose rank process ends right after this: a single
    process (a test, a notebook, a script calling main()) keeps its own SIGTERM handling."""
    if world_size() > 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_stop_callback():
    """The stop-on-signal callback: installed on every rank (`installed()` around training); at each step end
    the ranks agree (an all-reduce of the exit code) so all of them stop at the same step even when only
    some got the signal. A second Ctrl-C interrupts at once."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def __init__(self):
            self.requested = None  # the signal's name, on the ranks that got it
            self.exit_code = 0  # agreed by all ranks

        def on_signal(self, signum, frame):
            first = self.requested is None
            self.requested = signal.Signals(signum).name
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C interrupts at once
            if first and is_main_process():
                tell(f"\n[中断] 收到 {self.requested}，保存检查点后退出（再按一次 Ctrl-C 立即退出）...")

        def installed(self):
            return handlers(self.on_signal)

        def on_step_end(self, args, state, control, **kwargs):
            code = agreed_exit_code(EXIT_CODES.get(self.requested, 0), args.device)
            if code:
                self.exit_code = code
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnSignal()


def agreed_exit_code(code: int, device) -> int:
    """The highest exit code any rank asks for (0: none asked to stop)."""
    if world_size() <= 1:
        return code
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return code
    flag = torch.tensor([code], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
