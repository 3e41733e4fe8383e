#!/usr/bin/env bash
# Installs what building and testing stockd needs on a fresh Debian machine:
# libclang (rocksdb's bindgen) and a C++ toolchain. Idempotent and quiet when
# everything is already there.
set -euo pipefail

need=()
# libclang.so itself: libclang-cpp.so (installed with llvm) is another library
# and bindgen cannot load it.
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1; then
  need+=(libclang-dev)
fi
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  sudo_cmd=()
  if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
