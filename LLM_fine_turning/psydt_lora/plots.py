"""Charts as PNG files, written atomically on matplotlib's headless backend: the shared helpers and the
training loss curve (the batch test's chart is drawn in report.py with the same helpers)."""
import io
from pathlib import Path

from psydt_lora.files import atomic_write_bytes


def pyplot():
    """matplotlib's pyplot on the headless backend (no display on training machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    """A matplotlib figure as a PNG, written atomically; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_losses(history: dict, path: Path, title: str) -> bool:
    """The loss curve; a preference run's reward margins and accuracy in a second panel beside it."""
    if not history["train"] and not history["eval"]:
        return False
    rewards = [k for k in ("rewards/margins", "eval_rewards/margins", "rewards/accuracies", "eval_rewards/accuracies")
               if history.get(k)]
    fig, axes = pyplot().subplots(1, 2 if rewards else 1, figsize=(12 if rewards else 7, 4), dpi=120, squeeze=False)
    ax = axes[0][0]
    if history["train"]:
        ax.plot(*zip(*history["train"]), label="train loss", marker="." if len(history["train"]) < 30 else None)
    if history["eval"]:
        ax.plot(*zip(*history["eval"]), label="eval loss", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if rewards:
        side = axes[0][1]
        for k in rewards:
            side.plot(*zip(*history[k]), label=k.replace("eval_", "eval ").replace("rewards/", "reward "), marker=".")
        side.set_xlabel("step")
        side.set_title("preference: reward margin and accuracy")
        side.grid(alpha=0.3)
        side.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return True
