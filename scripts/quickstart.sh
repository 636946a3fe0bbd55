#!/usr/bin/env bash
# The README's first command: set up everything and train the MNIST example end to end.
#
#   bash scripts/quickstart.sh [flags for examples/mnist/train.py, e.g. --num_epochs=1]
#
# Steps, each announced before it runs:
#   1. Python: python3 (3.11 or newer) with venv support; installed with apt-get when missing
#      and this runs as root on Debian/Ubuntu.
#   2. A virtual environment: the active one if $VIRTUAL_ENV is set, else ./.venv (created on
#      first use, reused afterwards). Set FLAXEN_VENV=DIR to choose another folder.
#   3. flaxen and its dependencies: pip install -e ".[examples,dev]" (JAX, optax, ...).
#   4. Data: MNIST is downloaded once into ~/.cache/flaxen/datasets/mnist (11 MB). Without
#      internet access, Fashion-MNIST (same format: 28x28 grey images, 10 classes) from the
#      Debian package dataset-fashion-mnist is used instead, installed with apt-get when
#      missing and this runs as root.
#   5. Training: python examples/mnist/train.py with the data chosen above, outputs in
#      ${OUTPUT_DIR:-runs/mnist}; the example prints a summary at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'Error: %s\n' "$*" >&2; exit 2; }
is_root_with_apt() { [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; }
APT_UPDATED=0
apt_install() {  # apt_install WHY PACKAGE...
  local why=$1
  shift
  say "Installing $* with apt-get ($why)"
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# -- 1. Python ---------------------------------------------------------------------------
python_ok() {
  command -v python3 >/dev/null 2>&1 &&
    python3 -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}
if [ -z "${VIRTUAL_ENV:-}" ] && ! python_ok; then
  if is_root_with_apt; then
    apt_install "python3 >= 3.11 with venv support is needed and missing" python3 python3-venv
    python_ok || fail "python3 >= 3.11 with venv is still missing after apt-get install."
  else
    fail "flaxen needs python3 >= 3.11 with the venv module (Debian/Ubuntu: apt-get install" \
      "python3 python3-venv, as root)."
  fi
fi

# -- 2. Virtual environment ----------------------------------------------------------------
if [ -n "${VIRTUAL_ENV:-}" ]; then
  say "Using the active virtual environment $VIRTUAL_ENV"
  PY="$VIRTUAL_ENV/bin/python"
else
  VENV="${FLAXEN_VENV:-.venv}"
  if [ -x "$VENV/bin/python" ]; then
    say "Reusing the virtual environment $VENV"
  else
    say "Creating a virtual environment in $VENV (python3 -m venv)"
    python3 -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
fi

# -- 3. flaxen and its dependencies ----------------------------------------------------------
say "Installing flaxen (editable) with the examples and dev extras: pip install -e \".[examples,dev]\""
echo "   (JAX, jaxlib, optax, msgpack, NumPy; absl-py, tqdm, matplotlib, Pillow, sentencepiece;"
echo "    pytest, hypothesis, ruff, mypy, tensorboard: a few hundred MB on the first run)"
"$PY" -m pip install -e ".[examples,dev]"

# -- 4. Data ---------------------------------------------------------------------------------
DATA_FLAGS=()
say "Getting MNIST (downloaded once, 11 MB, checked against its SHA-256 sums)"
if MNIST_ERROR=$("$PY" - <<'EOF' 2>&1
from examples.mnist import input_pipeline as ip
folder = ip.ensure_downloaded(ip.MNIST)
print(f"MNIST is in {folder}")
EOF
); then
  echo "$MNIST_ERROR"
  DATA_FLAGS=(--dataset=mnist)
  WHY="MNIST (downloaded or already cached)"
else
  echo "MNIST is not available: $(printf '%s\n' "$MNIST_ERROR" | tail -n1 |
    sed 's/^[A-Za-z_.]*Error: //')"
  echo "Using Fashion-MNIST instead: the same format (28x28 grey images, 10 classes), from the"
  echo "Debian package dataset-fashion-mnist, which needs no internet beyond the package mirror."
  fashion_dir() {
    command -v dpkg >/dev/null 2>&1 || return 1
    dpkg -L dataset-fashion-mnist 2>/dev/null | grep -m1 '/train-images-idx3-ubyte.gz$' |
      xargs -r dirname
  }
  FASHION=$(fashion_dir || true)
  if [ -z "$FASHION" ]; then
    if is_root_with_apt; then
      apt_install "MNIST could not be downloaded; Fashion-MNIST is the offline dataset" \
        dataset-fashion-mnist
      FASHION=$(fashion_dir || true)
    fi
    [ -n "$FASHION" ] || fail "No dataset: MNIST could not be downloaded and Fashion-MNIST is" \
      "not installed. Connect to the internet, or run as root on Debian/Ubuntu (this script" \
      "then installs dataset-fashion-mnist), or pass the folder of four IDX files:" \
      "bash scripts/quickstart.sh --dataset=idx --data_dir=DIR"
  fi
  echo "Fashion-MNIST files: $FASHION"
  DATA_FLAGS=(--dataset=fashion_mnist "--data_dir=$FASHION")
  WHY="Fashion-MNIST, because MNIST could not be downloaded"
fi

# -- 5. Training -------------------------------------------------------------------------------
OUT="${OUTPUT_DIR:-runs/mnist}"
CMD=("$PY" examples/mnist/train.py "${DATA_FLAGS[@]}" "--output_dir=$OUT" "$@")
say "Training: ${CMD[*]}"
"${CMD[@]}"

say "Done in $((SECONDS - START)) s (set-up included). Data: $WHY. Outputs in $OUT."
echo "Next: the tests, \`$PY -m pytest -q\` (or \`-m 'not slow'\` for the fast subset)."
