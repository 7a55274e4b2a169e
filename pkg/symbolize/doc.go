// Package symbolize turns the raw call stacks the kernel captured with a
// capability check (issue 13) into frames a reviewer can read: kernel
// addresses through /proc/kallsyms (symbol+offset), user frames through the
// ELF files they came from (build ID and file offset, resolved through the
// process's or the container's root), with Go's debug/elf and debug/gosym.
//
// It runs off the ring reader's hot path: the output records carry the raw
// stacks and symbolize them once, in the first sink writer that asks.
//
// Every frame prints: one that cannot be named prints as
// "[unknown] 0x<address> (<module>)", never dropped.
package symbolize
