package bpf

// The BPF object is compiled once per target with clang against the committed
// headers/vmlinux.h (CO-RE relocates it on other kernels). `make generate`
// runs these lines; the outputs are committed.
// -type names every kernel layout and constant Go shares with the program, so
// Go reads and writes them through generated types (layout_test.go holds the
// few remaining hand-kept values to the object's BTF).
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target amd64,arm64 -type cap_event -type setting_flag -type loss_slot -type caller_kind -type slot_state -type stack_head -type exe_id -type container_state captrace captrace.c -- -I./headers

// Syscall name tables, from golang.org/x/sys/unix's generated numbers.
//go:generate go run ./internal/syscallgen -out .
