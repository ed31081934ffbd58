#!/usr/bin/env bash
# Builds the Kubernetes control plane the cluster tests run (kube-apiserver,
# kube-controller-manager, kube-scheduler, etcd) from the Go modules pinned in
# tests/cluster/go.mod into .tools/bin. Go's module and build caches (under $HOME by
# default) persist between runs: a warm rebuild only links. Needs `go` (1.25+) and the
# Go module proxy.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.tools/bin"
mod="$root/tests/cluster"
command -v go >/dev/null || { echo "cluster-tools: no 'go' on PATH (Go 1.25+ is needed to build the control plane)" >&2; exit 1; }
mkdir -p "$bin"
stamp="$bin/.cluster-tools.sum"
want="$(cat "$mod/go.mod" "$mod/go.sum" "$0" | sha256sum | cut -d' ' -f1) $(go env GOVERSION)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
	&& [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" && -x "$bin/kube-scheduler" && -x "$bin/etcd" ]]; then
	echo "cluster-tools: up to date in $bin"
	exit 0
fi
export CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly" GOTOOLCHAIN=local
cd "$mod"
tmp="$(mktemp -d "$bin/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# The release the binaries report (`kube-apiserver --version`, the API's /version, which Helm
# checks against a chart's kubeVersion), as the Kubernetes build sets it.
release="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' go.mod)"
major="${release#v}"; major="${major%%.*}"
minor="${release#v*.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$release -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
# One invocation: the packages the binaries share compile once.
go build -ldflags="$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	go.etcd.io/etcd/server/v3
mv "$tmp/server" "$bin/etcd"
mv "$tmp/kube-apiserver" "$tmp/kube-controller-manager" "$tmp/kube-scheduler" "$bin/"
echo "$want" > "$stamp"
echo "cluster-tools: built kube-apiserver, kube-controller-manager, kube-scheduler, etcd into $bin"
