package main

import (
	"fmt"
	"os"

	"github.com/cilium/ebpf/rlimit"
)

// Before anything loads BPF, lift RLIMIT_MEMLOCK: kernels before 5.11 count
// BPF maps against it. On later kernels (memcg accounting) this does nothing.
// It lives here, not in package bpf: cilium/ebpf's rlimit package probes the
// kernel with a bpf() call in its init, which would add CAP_BPF checks to
// every process that imports bpf (its tests' traced children included).
// Without CAP_SYS_RESOURCE it fails; bpf.Open then names a refused map as a
// memlock limit. As another user (captrace report) BPF is not needed: no warning.
func init() {
	if err := rlimit.RemoveMemlock(); err != nil && os.Geteuid() == 0 {
		fmt.Fprintf(os.Stderr, "captrace: warning: could not lift RLIMIT_MEMLOCK (%v); on kernels before 5.11 run with CAP_SYS_RESOURCE or LimitMEMLOCK=infinity\n", err)
	}
}
