//go:build !amd64

package bpf

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// arm64 has only the *at forms of the path syscalls.
func chownPath(p *byte) unix.Errno {
	fd := unix.AT_FDCWD
	_, _, e := unix.RawSyscall6(unix.SYS_FCHOWNAT, uintptr(fd), uintptr(unsafe.Pointer(p)), 1, 1, 0, 0)
	return e
}

func chmodPath(p *byte) unix.Errno {
	fd := unix.AT_FDCWD
	_, _, e := unix.RawSyscall6(unix.SYS_FCHMODAT, uintptr(fd), uintptr(unsafe.Pointer(p)), 0o400, 0, 0, 0)
	return e
}

var igGuideSyscalls = map[string]string{"chown": "SYS_FCHOWNAT", "chmod": "SYS_FCHMODAT"}
