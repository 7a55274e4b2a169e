package bpf

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The legacy path syscalls the seed's busybox makes on x86_64.
func chownPath(p *byte) unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_CHOWN, uintptr(unsafe.Pointer(p)), 1, 1)
	return e
}

func chmodPath(p *byte) unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_CHMOD, uintptr(unsafe.Pointer(p)), 0o400, 0)
	return e
}

var igGuideSyscalls = map[string]string{"chown": "SYS_CHOWN", "chmod": "SYS_CHMOD"}
