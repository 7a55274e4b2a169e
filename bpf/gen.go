package bpf

// The BPF object is compiled once per target with clang against the committed
// headers/vmlinux.h (CO-RE relocates it on other kernels). `make generate`
// runs these lines; the outputs are committed.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target amd64,arm64 captrace captrace.c -- -I./headers

// Syscall name tables, from golang.org/x/sys/unix's generated numbers.
//go:generate go run ./internal/syscallgen -out .
