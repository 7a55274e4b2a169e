#!/usr/bin/env bash
# Kernel matrix: boots Debian's cloud kernels under qemu (x86_64 6.1, 6.12 and
# the newest sid offers; arm64 6.12) and runs captrace's privileged tests there
# (probing must pick fexit; forced tiers must pass too). Flags and environment:
# `test/kernels/run.sh -h`.
# Cached downloads, kernels, serial logs: test/kernels/cache/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p test/kernels/cache
go build -o test/kernels/cache/matrix ./test/kernels/matrix
exec test/kernels/cache/matrix "$@"
