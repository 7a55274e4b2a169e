#!/usr/bin/env bash
# Builds the single-node Kubernetes of `make e2e-k8s` from the Go module proxy
# (see test/e2e/k8s/README.md): kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and kubectl v$K8S_VERSION, etcd $ETCD_VERSION and the
# CNI plugins bridge, host-local and loopback $CNI_VERSION.
#
# Each set lands in .cache/k8s/<name>-<version>/bin (git-ignored) with a stamp
# file; a set whose stamp matches is not rebuilt. The Kubernetes flags never
# change (-trimpath makes the build independent of its directory), so a fresh
# clone on a machine whose Go build cache saw them before only links.
#
# Usage: scripts/build-k8s.sh [kubernetes] [etcd] [cni]   (default: all three)
# K8S_CACHE overrides the cache directory (default: <repo>/.cache/k8s).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CNI_VERSION=${CNI_VERSION:-v1.10.0}

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${K8S_CACHE:-$root/.cache/k8s}
parts=" ${*:-kubernetes etcd cni} "
mkdir -p "$cache"
# One build at a time (two worktrees, or CI beside a developer).
exec 9>"$cache/lock"
if ! flock -n 9; then
	echo "build-k8s: waiting for another build holding $cache/lock" >&2
	flock 9
fi

# progress LABEL PID LOG: every 10 s, how long LABEL has run and how many
# packages `go build -v` has compiled so far (cached packages are not listed).
progress() {
	local label=$1 pid=$2 log=$3 start=$SECONDS
	while kill -0 "$pid" 2>/dev/null; do
		sleep 10 & wait $! || true
		kill -0 "$pid" 2>/dev/null || break
		local n
		n=$(grep -cv '^go: ' "$log" 2>/dev/null || true)
		printf 'build-k8s: %s: %d s, %d packages compiled\n' "$label" $((SECONDS - start)) "${n:-0}" >&2
	done
}

# run_logged LABEL LOG CMD...: runs CMD with its output in LOG and progress
# lines on stderr; on failure prints the log's tail.
run_logged() {
	local label=$1 log=$2
	shift 2
	"$@" >"$log" 2>&1 &
	local pid=$!
	progress "$label" "$pid" "$log" &
	local ticker=$!
	local rc=0
	wait "$pid" || rc=$?
	kill "$ticker" 2>/dev/null || true
	wait "$ticker" 2>/dev/null || true
	if [ "$rc" != 0 ]; then
		echo "build-k8s: $label failed (exit $rc); last lines of $log:" >&2
		tail -n 40 "$log" >&2
		exit "$rc"
	fi
}

# fresh NAME STAMP: true when $cache/NAME/stamp holds STAMP.
fresh() { [ "$(cat "$cache/$1/stamp" 2>/dev/null)" = "$2" ]; }

# ---- Kubernetes ----
k8s_flags="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=${K8S_VERSION%%.*} -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
k8s_stamp="kubernetes v$K8S_VERSION go build -mod=mod -trimpath -ldflags $k8s_flags"
k8s_dir=$cache/v$K8S_VERSION
if [[ $parts != *" kubernetes "* ]]; then
	:
elif fresh "v$K8S_VERSION" "$k8s_stamp"; then
	echo "build-k8s: Kubernetes v$K8S_VERSION cached in $k8s_dir/bin" >&2
else
	t0=$SECONDS
	rm -rf "$k8s_dir"
	mkdir -p "$k8s_dir"
	echo "build-k8s: Kubernetes v$K8S_VERSION: downloading k8s.io/kubernetes from the module proxy" >&2
	modroot=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -d "$modroot" ] || { echo "build-k8s: go mod download k8s.io/kubernetes@v$K8S_VERSION gave no directory" >&2; exit 1; }
	src=$k8s_dir/src
	cp -r "$modroot" "$src"
	chmod -R u+w "$src"
	# The module zip lacks the nested staging modules: drop the workspace and
	# take each staging module from the proxy at the matching v0 version.
	rm -f "$src/go.work" "$src/go.work.sum"
	sed -i -E "s#^(\s*)(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+#\1\2 => \2 v0.${K8S_VERSION#*.}#" "$src/go.mod"
	if grep -q '=> \./staging' "$src/go.mod"; then
		echo "build-k8s: go.mod still replaces modules with ./staging after the rewrite" >&2
		exit 1
	fi
	(cd "$src" && run_logged "Kubernetes v$K8S_VERSION: go mod download" "$k8s_dir/download.log" go mod download)
	echo "build-k8s: Kubernetes v$K8S_VERSION: go build (cold: ~25 min of 2 cores; warm Go build cache: links only)" >&2
	(cd "$src" && run_logged "Kubernetes v$K8S_VERSION: go build" "$k8s_dir/build.log" \
		go build -v -mod=mod -trimpath -ldflags "$k8s_flags" -o "$k8s_dir/bin/" \
		./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubelet ./cmd/kubectl)
	rm -rf "$src"
	echo "$k8s_stamp" >"$k8s_dir/stamp"
	echo "build-k8s: Kubernetes v$K8S_VERSION built in $((SECONDS - t0)) s" >&2
fi

# ---- etcd: a wrapper module, because `go install` refuses etcd's replace directives ----
etcd_stamp="etcd $ETCD_VERSION go build -trimpath -ldflags -s -w"
etcd_dir=$cache/etcd-$ETCD_VERSION
if [[ $parts != *" etcd "* ]]; then
	:
elif fresh "etcd-$ETCD_VERSION" "$etcd_stamp"; then
	echo "build-k8s: etcd $ETCD_VERSION cached in $etcd_dir/bin" >&2
else
	t0=$SECONDS
	rm -rf "$etcd_dir"
	mkdir -p "$etcd_dir/src"
	cd "$etcd_dir/src"
	go mod init etcdwrap >/dev/null 2>&1
	printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >tools.go
	for m in server/v3 api/v3 client/pkg/v3 client/v3 pkg/v3; do
		go mod edit -require="go.etcd.io/etcd/$m@$ETCD_VERSION"
	done
	run_logged "etcd $ETCD_VERSION: go mod tidy" "$etcd_dir/tidy.log" go mod tidy
	run_logged "etcd $ETCD_VERSION: go build" "$etcd_dir/build.log" \
		go build -v -trimpath -ldflags "-s -w" -o "$etcd_dir/bin/etcd" go.etcd.io/etcd/server/v3
	cd "$root"
	rm -rf "$etcd_dir/src"
	echo "$etcd_stamp" >"$etcd_dir/stamp"
	echo "build-k8s: etcd $ETCD_VERSION built in $((SECONDS - t0)) s" >&2
fi

# ---- CNI plugins ----
cni_stamp="cni $CNI_VERSION bridge host-local loopback go install -trimpath -ldflags -s -w"
cni_dir=$cache/cni-$CNI_VERSION
if [[ $parts != *" cni "* ]]; then
	:
elif fresh "cni-$CNI_VERSION" "$cni_stamp"; then
	echo "build-k8s: CNI plugins $CNI_VERSION cached in $cni_dir/bin" >&2
else
	t0=$SECONDS
	rm -rf "$cni_dir"
	mkdir -p "$cni_dir/bin"
	p=github.com/containernetworking/plugins/plugins
	(cd "$cni_dir" && GOBIN="$cni_dir/bin" GOFLAGS= GOWORK=off run_logged "CNI plugins $CNI_VERSION: go install" "$cni_dir/build.log" \
		go install -v -trimpath -ldflags "-s -w" "$p/main/bridge@$CNI_VERSION" "$p/ipam/host-local@$CNI_VERSION" "$p/main/loopback@$CNI_VERSION")
	echo "$cni_stamp" >"$cni_dir/stamp"
	echo "build-k8s: CNI plugins $CNI_VERSION built in $((SECONDS - t0)) s" >&2
fi
# The result, one line per set, read by test/e2e/k8s.
for part in $parts; do
	case $part in
	kubernetes) echo "build-k8s: dir kubernetes=$k8s_dir/bin" ;;
	etcd) echo "build-k8s: dir etcd=$etcd_dir/bin" ;;
	cni) echo "build-k8s: dir cni=$cni_dir/bin" ;;
	esac
done
