# Shared by scripts/image.sh and the image tests: buildah on this checkout's own storage.
# shellcheck shell=bash
out=${out:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tools/image}

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: building the image needs root (buildah with the vfs driver and chroot isolation)" >&2
    exit 1
  fi
}

ensure_tools() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# buildah with this checkout's own image store: builds in two checkouts do not meet.
bah() {
  buildah --storage-driver vfs --root "$out/storage" --runroot "$out/run" "$@"
}

# The Debian mirror apt is configured with (deb822 sources or sources.list).
apt_mirror() {
  local uri
  uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}
