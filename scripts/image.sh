#!/usr/bin/env bash
# `make image`: build the Mesial image from Containerfile with buildah (no Docker daemon) and
# write it as an OCI archive with its CycloneDX SBOM beside it:
#   .tools/image/mesial.oci.tar   the image (tag mesial:<version>)
#   .tools/image/mesial.cdx.json  the SBOM (the same file is in the image at /usr/share/doc/mesial/)
#   .tools/image/mesial.digest    the manifest digest, for the chart's image.digest
# BASE: the base image (an official slim Python image of your registry). Unset, a Debian
# bookworm root made by debootstrap is imported as localhost/mesial-base:bookworm, so the
# build needs no registry. Needs root: buildah runs with the vfs driver and chroot isolation
# (the only combination that works inside an unprivileged sandbox without a runtime).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.tools/image"
mkdir -p "$out"
# shellcheck source=scripts/image-lib.sh
source "$root/scripts/image-lib.sh"

need_root
ensure_tools

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -1)
base=${BASE:-}
if [ -z "$base" ]; then
  base=localhost/mesial-base:bookworm
  if ! bah inspect --type image "$base" >/dev/null 2>&1; then
    rootfs="$out/rootfs-base"
    if [ ! -x "$rootfs/usr/bin/python3" ]; then
      mirror=$(apt_mirror)
      echo "debootstrap: bookworm from $mirror into $rootfs"
      rm -rf "$rootfs"
      start=$SECONDS
      debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" >"$out/debootstrap.log"
      echo "debootstrap: $((SECONDS - start)) s"
    fi
    ctr=$(bah from scratch)
    bah copy --quiet "$ctr" "$rootfs" / >/dev/null
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    bah commit --quiet "$ctr" "$base" >/dev/null
    bah rm "$ctr" >/dev/null
  fi
fi

# Every build downloads its Python packages from PyPI (the image has no pip cache).
build_args=(--build-arg "BASE=$base" --build-arg "VERSION=$version")
# The host's pip CA bundle (a proxy that intercepts TLS) and index reach the build, not the image.
cert=${PIP_CERT:-$("$root/.venv/bin/python" -P -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
  build_args+=(--volume "$cert:/etc/mesial-build/ca.crt:ro" --build-arg PIP_CERT_FILE=/etc/mesial-build/ca.crt)
fi
if [ -n "${PIP_INDEX_URL:-}" ]; then
  build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
fi
start=$SECONDS
bah bud --isolation chroot --layers=false --quiet "${build_args[@]}" \
  -f "$root/Containerfile" -t "localhost/mesial:$version" "$root" >/dev/null
echo "build: $((SECONDS - start)) s"

rm -f "$out/mesial.oci.tar"
bah push --quiet --digestfile "$out/mesial.digest" "localhost/mesial:$version" "oci-archive:$out/mesial.oci.tar:mesial:$version"
ctr=$(bah from "localhost/mesial:$version")
mnt=$(bah mount "$ctr")
cp "$mnt/usr/share/doc/mesial/sbom.cdx.json" "$out/mesial.cdx.json"
bah umount "$ctr" >/dev/null
bah rm "$ctr" >/dev/null
bah rmi --prune >/dev/null 2>&1 || true  # the image this build replaced
echo "image: $out/mesial.oci.tar ($(du -m "$out/mesial.oci.tar" | cut -f1) MiB archive, $(bah images --format '{{.Size}}' "localhost/mesial:$version") unpacked)"
echo "digest: $(cat "$out/mesial.digest")"
echo "sbom: $out/mesial.cdx.json"
