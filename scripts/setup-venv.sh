#!/usr/bin/env bash
# Creates .venv (Python 3.11) with the exact packages of
# models/train/requirements.txt: training, the Python tests, and the
# onnxruntime shared library the server loads. Idempotent: a stamp file holds
# the hash of the requirements it was built from, and nothing is reinstalled
# while it matches.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
requirements=models/train/requirements.txt
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  exit 0
fi

python=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 \
    && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    python="$(command -v "$candidate")"
    break
  fi
done
if [ -z "$python" ] || ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "setup-venv: installing python3.11 and its venv module"
  sudo_cmd=()
  if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq python3.11 python3.11-venv >/dev/null
  python="$(command -v python3.11)"
fi

if [ -d "$venv" ] && ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "setup-venv: $venv is not Python 3.11, recreating it"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "setup-venv: creating $venv with $python"
  "$python" -m venv "$venv"
fi

echo "setup-venv: installing $requirements"
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "$want" >"$stamp"
echo "setup-venv: ready ($("$venv/bin/python" -c 'import onnxruntime; print("onnxruntime", onnxruntime.__version__)'))"
