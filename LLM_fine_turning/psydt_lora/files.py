"""Atomic file and folder writes (readers never see a half-written output), reading user JSON, local path checks.

Everything written here gets the modes a plain `open()` / `mkdir()` would give under the process's umask
(0644 / 0755 under umask 022, 0600 / 0700 under 077): the temporary files and folders an atomic write goes
through are private (mkstemp 0600, mkdtemp 0700) and so are the files some writers make (safetensors 0600),
which would otherwise keep a served or shared model folder from every other user. A caller asks for a
private file with `mode=0o600` (the chat transcripts)."""
import json
import os
import shutil
import tempfile
from pathlib import Path

from psydt_lora.errors import PsyDTError


def read_user_text(path, label: str) -> str:
    """A whole UTF-8 text file the user named, or a PsyDTError naming `label` (the flag or what it is) and the file."""
    path = Path(path)
    try:
        return path.read_text("utf-8-sig")
    except FileNotFoundError:
        raise PsyDTError(f"找不到{label} {path}。") from None
    except UnicodeDecodeError:
        raise PsyDTError(f"{label} {path} 不是 UTF-8 编码。请另存为 UTF-8。") from None
    except OSError as err:
        raise PsyDTError(f"无法读取{label} {path}：{err.strerror}") from None


def read_json(path, label: str):
    """A whole JSON file, or a PsyDTError naming `label` (the flag or what the file is) and the file."""
    text = read_user_text(path, label)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PsyDTError(f"{label} {path} 不是合法的 JSON（{json_problem(err)}）。") from None


JSON_PROBLEMS = {  # json.JSONDecodeError.msg -> the same in Chinese (the messages of Python's json module)
    "Expecting value": "这里应该是一个值（可能多了一个逗号、少了内容，或文件被截断）",
    "Expecting ',' delimiter": "这里缺少逗号 ,（或括号没有闭合）",
    "Expecting ':' delimiter": "这里缺少冒号 :",
    "Expecting property name enclosed in double quotes": "这里应该是双引号括起来的字段名（可能多了一个逗号，或用了单引号）",
    "Unterminated string starting at": "从这里开始的字符串没有结束的双引号",
    "Invalid control character at": "字符串里有未转义的控制字符（换行、制表符要写成 \\n、\\t）",
    "Invalid \\escape": "无效的转义（反斜杠 \\ 后面的字符不合法；Windows 路径里的 \\ 要写成 \\\\ 或 /）",
    "Invalid \\uXXXX escape": "无效的 \\uXXXX 转义",
    "Extra data": "一个完整的 JSON 值之后还有多余的内容（JSON Lines 文件请每行一条记录）",
    "Illegal trailing comma before end of object": "对象的最后一项后面多了一个逗号",
    "Illegal trailing comma before end of array": "数组的最后一项后面多了一个逗号",
}


def json_problem(err: json.JSONDecodeError, line: bool = True) -> str:
    """What is wrong with a JSON text, in Chinese, with the line (unless `line` is False) and the column."""
    what = JSON_PROBLEMS.get(err.msg, f"JSON 语法错误（{err.msg}）")
    return f"{f'第 {err.lineno} 行' if line else ''}第 {err.colno} 列：{what}"


def check_files_exist(named: dict) -> None:
    """{flag: path or None}: every given path must be a readable file."""
    for flag, path in named.items():
        if path is None:
            continue
        path = Path(path)
        if not path.is_file():
            raise PsyDTError(f"{flag} {path} 不存在（或不是文件）。")
        if not os.access(path, os.R_OK):
            raise PsyDTError(f"{flag} {path} 没有读取权限。")


def check_can_write(path, flag: str) -> None:
    """`path` (file or folder, existing or not) can be created or replaced: its nearest existing folder
    is writable. Creates nothing."""
    path = Path(path).absolute()
    probe = path if path.is_dir() else path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PsyDTError(f"{flag} {path} 无法写入（{probe} 不可写）。请换一个位置。")


def current_umask() -> int:
    """The process's umask, read from /proc where the system shows it (setting it to read it would briefly
    change it for every thread), else set and put back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(folder: bool = False, executable: bool = False) -> int:
    """The mode `open()` (or `mkdir()`, or a program's own executable) gets under the umask."""
    return (0o777 if folder or executable else 0o666) & ~current_umask()


def honour_umask(path) -> None:
    """Give a written file, or a folder and everything under it, the modes the umask gives: files 0o666 & ~umask
    (0o777 & ~umask where the writer made them executable), folders 0o777 & ~umask. Links are left alone."""
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, umask_mode(executable=bool(path.stat().st_mode & 0o111)))
        return
    os.chmod(path, umask_mode(folder=True))
    for child in path.iterdir():
        honour_umask(child)


def atomic_write_bytes(path, data: bytes, mode: int | None = None) -> None:
    """`data` to `path` through a temporary file beside it; the file gets `mode`, else what the umask gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode() if mode is None else mode)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path, obj, mode: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n", mode=mode)


def temp_dir_beside(path) -> Path:
    """A fresh temporary folder next to `path` (same filesystem, so a rename is atomic), with the mode the
    umask gives a folder (mkdtemp makes it 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, umask_mode(folder=True))
    return tmp


def write_dir(final_dir, fill, tmp=None) -> None:
    """Write a folder atomically: `fill(tmp)` writes everything into a temporary folder beside it
    (`tmp` when given, e.g. one that several processes have already written into), which then replaces
    `final_dir`; on any failure the temporary folder is removed. Every file and folder in it gets the modes
    the umask gives (`honour_umask`), whatever the writers made them."""
    tmp = temp_dir_beside(final_dir) if tmp is None else Path(tmp)
    try:
        fill(tmp)
        honour_umask(tmp)
        replace_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp_dir, final_dir) -> None:
    """Move a fully written `tmp_dir` to `final_dir`, replacing an older one.

    The old folder is renamed aside first and removed only after the new one is in
    place, so at every moment `final_dir` is either the old complete folder or the new one.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_records(path: Path) -> list:
    """The records of a JSON array or JSON Lines file, or a PsyDTError naming the file and the line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PsyDTError(f"找不到数据文件 {path}。") from None
    except OSError as err:
        raise PsyDTError(f"无法读取数据文件 {path}：{err.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise PsyDTError(
            f"数据文件 {path} 不是 UTF-8 编码（第 {line} 行、第 {err.start + 1} 个字节处"
            "无法解码）。请把文件另存为 UTF-8。"
        ) from None
    stripped = text.lstrip()
    if not stripped:
        raise PsyDTError(f"数据文件 {path} 是空的。")
    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            ran_out = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")
            cut = "，文件可能下载不完整或被截断" if ran_out else ""
            raise PsyDTError(f"数据文件 {path} 不是合法的 JSON（{json_problem(err)}）{cut}。") from None
        return data
    if stripped[0] == "{":
        # JSON Lines: one record per non-empty line. A whole-file single object is not a dataset.
        if stripped.count("\n") > 0 and not stripped.splitlines()[0].rstrip().endswith("}"):
            try:
                json.loads(text)
                raise PsyDTError(f"数据文件 {path} 的顶层必须是记录列表 [...]，而它是单个 JSON 对象。")
            except json.JSONDecodeError:
                pass
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise PsyDTError(
                    f"数据文件 {path} 第 {lineno} 行不是合法的 JSON（{json_problem(err, line=False)}）。"
                    "JSON Lines 文件每行必须是一条完整的记录。"
                ) from None
        return records
    raise PsyDTError(
        f"数据文件 {path} 的顶层必须是 JSON 数组 [...] 或 JSON Lines（每行一个 {{...}}），"
        f"而文件以 {stripped[:1]!r} 开头。"
    )


def user_cache_dir(*parts) -> Path:
    """This tool's per-user cache folder (like `datasets`' own ~/.cache/huggingface): $PSYDT_CACHE_DIR, else
    $XDG_CACHE_HOME/psydt_lora, else ~/.cache/psydt_lora. Created by whoever writes into it."""
    root = os.environ.get("PSYDT_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "psydt_lora"
    return Path(root).expanduser().joinpath(*parts)
