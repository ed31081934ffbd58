#!/usr/bin/env bash
# Debian packages Mesial needs on the machine: the PostgreSQL server (tests, cluster-mode
# database), the shared libraries open3d loads (libusb, libgomp), iproute2 (the e2e node
# agent), a C compiler and the C library's headers (the aligner's kernel, setup.py). Installs
# only what is missing, so it is quick on a machine that has them.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
ldconfig -p | grep -q "libusb-1.0.so.0" || missing+=(libusb-1.0-0)
ldconfig -p | grep -q "libgomp.so.1" || missing+=(libgomp1)
# The e2e node agent gives Services a network namespace of their own (ip link/addr; nsenter, unshare
# and setpriv come with util-linux).
command -v ip >/dev/null || missing+=(iproute2)
# pip install compiles aligner/_meshquery.c (plain C99 and POSIX threads: no Python headers)
command -v gcc >/dev/null || missing+=(gcc)
[ -f /usr/include/pthread.h ] || missing+=(libc6-dev)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "installing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "error: need root (or sudo) to install: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's postgresql package starts a cluster of its own on port 5432; Mesial runs its
# own clusters on free ports and does not need that one.
if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_ctlcluster >/dev/null; then
  for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
    "${sudo[@]}" pg_ctlcluster "${cluster%/*}" "${cluster#*/}" stop 2>/dev/null || true
  done
fi
