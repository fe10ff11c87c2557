#!/usr/bin/env bash
# Finish a LLaMA-Factory 0.9.5 venv for bench/peers.py on the CPU torch. LLaMA-Factory asks for torchvision
# and torchaudio, whose wheels pull a CUDA torch of several GB and fail beside the CPU torch 2.13.0, so it is
# installed with --no-deps (see bench/peers.py) and this script installs the rest of what it requires,
# keeping the torch that is there, and gives it an empty torchaudio package (imported, never used by a text
# model).  Usage: bash bench/peer_lf_fixup.sh VENV
set -euo pipefail
venv=${1:?usage: peer_lf_fixup.sh VENV}
py="$venv/bin/python"
reqs=$(mktemp)
"$py" - "$reqs" <<'PY'
import sys
from importlib.metadata import requires
keep = [r for r in requires("llamafactory") if "extra ==" not in r
        and r.split(">")[0].split("<")[0].split("=")[0].split("!")[0].strip() not in ("torch", "torchaudio", "torchvision")]
open(sys.argv[1], "w").write("\n".join(keep) + "\n")
PY
"$venv/bin/pip" install -q -r "$reqs" -c <("$py" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])')
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/torchaudio"
echo '__version__ = "0.0.0"  # empty stand-in: see bench/peer_lf_fixup.sh' > "$site/torchaudio/__init__.py"
"$py" -c 'import torch, llamafactory; print("LLaMA-Factory", llamafactory.__version__, "torch", torch.__version__)'
