#!/usr/bin/env bash
# Idempotent set-up used by `make demo` and `make test`:
#   * a virtual environment in .venv
#   * torch==2.13.0 pinned in the same pip call as everything else, unless a torch that satisfies the
#     project's range is already installed (e.g. a CUDA build on a GPU machine): then that one is kept
#   * the project with its test extras and the hf extra the import tests need (editable)
#   * espeak-ng (Debian package) through apt-get when it is missing
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_DEFAULT="torch==2.13.0"

# --- espeak-ng --------------------------------------------------------------------------------
if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    echo "[setup] installing espeak-ng with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq espeak-ng >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "[setup] installing espeak-ng with sudo apt-get"
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "[setup] ERROR: espeak-ng is not installed and this user cannot install it." >&2
    echo "        Install the Debian/Ubuntu package 'espeak-ng' (sudo apt-get install espeak-ng)," >&2
    echo "        or your distribution's espeak-ng package, then run this again." >&2
    exit 1
  fi
fi

# --- virtual environment --------------------------------------------------------------------------
stamp="$VENV/.just-asr-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/just-asr" ]; then
  exit 0
fi

# A torch already present in the system interpreter that satisfies our range is reused.
sys_torch=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
venv_flags=()
if [ ! -x "$VENV/bin/python" ]; then
  if [ -n "$sys_torch" ]; then
    echo "[setup] reusing the system torch $sys_torch (venv with --system-site-packages)"
    venv_flags+=(--system-site-packages)
  fi
  "$PY" -m venv "${venv_flags[@]}" "$VENV"
fi

torch_spec=${JUST_ASR_TORCH:-}
if [ -z "$torch_spec" ]; then
  have=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
  ok=$("$VENV/bin/python" - "$have" <<'PYEOF' 2>/dev/null || true
import sys
v = sys.argv[1]
try:
    parts = tuple(int(x) for x in v.split(".")[:2])
    print("yes" if parts >= (2, 4) else "")
except Exception:
    print("")
PYEOF
)
  if [ -n "$have" ] && [ "$ok" = "yes" ]; then
    torch_spec="torch==$have"   # keep the installed build (e.g. CUDA); pip will not touch it
    echo "[setup] keeping installed torch $have"
  else
    torch_spec="$TORCH_DEFAULT"
  fi
fi

echo "[setup] pip install ($torch_spec, just-asr[test,hf])"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel >/dev/null
"$VENV/bin/python" -m pip install -q "$torch_spec" -e ".[test,hf]"
echo "$want" > "$stamp"
echo "[setup] done"
