#!/usr/bin/env bash
# Installs what a target needs on a fresh Debian machine, and nothing twice.
# Usage: scripts/install-deps.sh <group>...   groups: generate test e2e kernels bench
set -euo pipefail

need=()
want() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' || need+=("$1"); }

for group in "$@"; do
	case "$group" in
	generate) want clang; want llvm; want bpftool ;;
	# systemd: the journald tests; busybox-static: test/kernels' initramfs and seedcheck;
	# qemu-system-x86, qemu-system-arm: test/kernels/matrix's tests of guests that never boot
	test) want bpftool; want systemd; want busybox-static; want gcc; want libc6-dev; want qemu-system-x86; want qemu-system-arm ;;
	# runc (Debian's 1.1.5; crun 1.8 rejects runtime-spec 1.3), busybox-static for the
	# images, systemd for the standalone journald and journalctl, util-linux for
	# unshare/nsenter, iproute2 for the k8s node's bridge teardown (ip link del);
	# containerd and crictl are built by the test with `go install`.
	# gcc and libc6-dev: the stacks e2e builds a static C probe (cc -static).
	e2e) want runc; want bpftool; want busybox-static; want systemd; want util-linux; want iproute2; want gcc; want libc6-dev ;;
	# qemu-system-arm provides qemu-system-aarch64 for the arm64 guests; apt-get download
	# (with the matrix's private sources) and dpkg-deb fetch the kernels and arm64's busybox.
	kernels) want qemu-system-x86; want qemu-system-arm; want busybox-static ;;
	bench) want bpftrace ;;
	*) echo "install-deps: unknown group $group" >&2; exit 2 ;;
	esac
done

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: missing Debian packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
		exit 1
	fi
	echo "install-deps: apt-get install ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
