"""SwanLab: its own Trainer callback, cloud when logged in, else local."""
from pathlib import Path

from psydt_lora.errors import PsyDTError


def resolve_swanlab_mode(requested: str) -> str:
    if requested in ("cloud", "online"):
        return "online"
    if requested != "auto":
        return requested
    try:
        import swanlab

        logged_in = bool(swanlab.Settings().api_key)
    except Exception:
        logged_in = False
    return "online" if logged_in else "local"


def make_swanlab_callback(project: str, run_name: str | None, mode: str, log_dir: Path, config: dict):
    """SwanLab's own Trainer callback (transformers' built-in reporter crashes with swanlab 0.10).
    Only numbers and settings are logged -- never dialogue text."""
    try:
        from swanlab.integration.transformers import SwanLabCallback
    except ImportError:
        raise PsyDTError("没有安装 swanlab：pip install 'swanlab[dashboard]'，或用 --report_to none 关闭记录。") from None
    if mode == "local":
        print(f"[SwanLab] 未登录，使用本地模式；查看：swanlab watch {log_dir}（登录后自动改为云端：swanlab login）", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    return SwanLabCallback(
        project=project, experiment_name=run_name, mode=mode, logdir=str(log_dir), config=config
    )

