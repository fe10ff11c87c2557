"""GGUF files for llama.cpp / Ollama / LM Studio, written by llama.cpp's own converters.

The converters are not on PyPI as a package of their own, but the llama-cpp-python source distribution
carries llama.cpp's tree: `pip download` fetches it once (an ordinary registry client, pinned version),
and only the converters and their gguf-py library are kept, under ~/.cache/psydt-lora. A llama.cpp
checkout of the user's own (--llama_cpp DIR) is used instead when given.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from psydt_lora.errors import PsyDTError
from psydt_lora.files import write_dir


TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes itself (no llama-quantize needed)
LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python release whose llama.cpp converters were tested here
CONVERT_FULL, CONVERT_LORA = "convert_hf_to_gguf.py", "convert_lora_to_gguf.py"
KEEP = (CONVERT_FULL, CONVERT_LORA, "LICENSE", "conversion/", "gguf-py/")  # inside vendor/llama.cpp/


def parse_types(text) -> list[str]:
    types = [t.strip().lower() for t in (text or "").split(",") if t.strip()]
    bad = [t for t in types if t not in TYPES]
    if bad or not types:
        raise PsyDTError(f"--gguf_types {text!r}：可选 {', '.join(TYPES)}（逗号分隔）。更小的量化（如 q4_k_m）请用 "
                         f"llama.cpp 的 llama-quantize 从 f16 的 GGUF 再量化。")
    return types


def output_dir(merged) -> Path:
    """GGUF files go beside the merged folder, not inside it (vLLM and the hub upload would carry them)."""
    merged = Path(merged)
    return merged.with_name(merged.name + "-gguf")


def cache_root() -> Path:
    return Path(os.environ.get("PSYDT_CACHE") or Path.home() / ".cache" / "psydt-lora")


def check_python_deps() -> None:
    try:
        import sentencepiece  # noqa: F401  (the converter imports it for every model, even BPE ones)
    except ImportError:
        raise PsyDTError("导出 GGUF 需要 sentencepiece（llama.cpp 的转换脚本要用）：pip install sentencepiece") from None


def converters(llama_cpp=None) -> Path:
    """A folder holding llama.cpp's convert_hf_to_gguf.py / convert_lora_to_gguf.py (and gguf-py)."""
    check_python_deps()
    if llama_cpp:
        folder = Path(llama_cpp)
        if not (folder / CONVERT_FULL).is_file() or not (folder / CONVERT_LORA).is_file():
            raise PsyDTError(f"--llama_cpp {folder} 里没有 {CONVERT_FULL} / {CONVERT_LORA}：请指向 llama.cpp 源码的根目录。")
        return folder
    folder = cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if (folder / CONVERT_FULL).is_file():
        return folder
    print(f"[导出] 第一次导出 GGUF：从 PyPI 下载 llama-cpp-python {LLAMA_CPP_PYTHON} 的源码包（约 75 MB），"
          f"取出 llama.cpp 的转换脚本，放到 {folder}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        extract_converters(download_sdist(Path(tmp)), folder)
    return folder


def download_sdist(dest: Path) -> Path:
    """The network boundary: pip fetches the source distribution (never builds or installs it)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        raise PsyDTError(
            f"下载 llama-cpp-python {LLAMA_CPP_PYTHON} 源码包失败（{(done.stderr or '').strip()[-300:]}）。"
            f"可以手动运行：{' '.join(cmd[:-2])} -d 某个目录，或者 git clone llama.cpp 后用 --llama_cpp 指向它。")
    return found[0]


def extract_converters(sdist: Path, folder: Path) -> None:
    """Keep only the converters and their library from the sdist; the folder appears whole or not at all."""
    def fill(tmp):
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                inner = member.name.split("/vendor/llama.cpp/", 1)
                if len(inner) == 2 and member.isfile() and inner[1].startswith(KEEP):
                    tar.extract(member.replace(name=inner[1]), tmp, filter="data")
        if not (Path(tmp) / CONVERT_FULL).is_file():
            raise PsyDTError(f"{sdist.name} 里没有 vendor/llama.cpp/{CONVERT_FULL}，请用 --llama_cpp 指向 llama.cpp 源码。")

    folder.parent.mkdir(parents=True, exist_ok=True)
    write_dir(folder, fill)


def run_converter(tools: Path, script: str, arguments: list, out_file: Path, what: str) -> Path:
    """Run one llama.cpp converter into a temporary file, renamed into place when it succeeded."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    log = out_file.with_name(f"{out_file.name}.log")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # use the converters' own gguf-py
    print(f"[导出] {what}：llama.cpp 的 {script}，在 CPU 上运行……", flush=True)
    with open(log, "w", encoding="utf-8") as f:
        done = subprocess.run([sys.executable, str(tools / script), *map(str, arguments), "--outfile", str(tmp)],
                              stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = log.read_text("utf-8", errors="replace").strip().splitlines()[-3:]
        raise PsyDTError(f"{what}失败（日志 {log}）：{' / '.join(tail)}")
    os.replace(tmp, out_file)
    log.unlink()
    print(f"[导出] {what}：{out_file}（{out_file.stat().st_size / 2**20:.1f} MiB）", flush=True)
    return out_file


def convert_model(tools: Path, merged, out_dir: Path, outtype: str) -> Path:
    out = Path(out_dir) / f"{Path(merged).name}-{outtype}.gguf"
    return run_converter(tools, CONVERT_FULL, [merged, "--outtype", outtype], out, f"完整模型 GGUF（{outtype}）")


def convert_lora(tools: Path, adapter, base, out_dir: Path, outtype: str = "f16") -> Path:
    out = Path(out_dir) / f"{Path(adapter).name}-{outtype}.gguf"
    return run_converter(tools, CONVERT_LORA, ["--base", base, "--outtype", outtype, adapter], out, "LoRA GGUF")
