// Package guestcheck holds smoke tests of the kernel a test runs on: the
// mounts captrace's tests expect, that bpf_get_current_cgroup_id equals the
// cgroup2 directory's inode, and which cap_capable attach points load. The
// kernel matrix (test/kernels) runs it in every guest before ./bpf's tests, so
// a broken guest shows as a guest failure, not as a tracer bug.
//
// The programs are built with cilium/ebpf's asm package: no clang, no
// generated objects, nothing shared with the tracer under test.
package guestcheck
