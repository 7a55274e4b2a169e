package bpf

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// uringOpenAsync opens path read-only through io_uring with IOSQE_ASYNC, so
// an io-wq worker thread (iou-wrk-<pid>, created by copy_process without
// fork's tracepoint) makes the permission checks, not the caller. It returns
// the open's result (an fd, closed, or -errno).
func uringOpenAsync(path string) (int32, error) {
	// struct io_uring_params (120 bytes): the ring offsets come back in it.
	var p struct {
		sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
		resv                                                                   [3]uint32
		sqOff                                                                  struct {
			head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
			userAddr                                                        uint64
		}
		cqOff struct {
			head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
			userAddr                                                        uint64
		}
	}
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 4, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return 0, fmt.Errorf("io_uring_setup: %w", errno)
	}
	defer unix.Close(int(fd))
	const offSQRing, offCQRing, offSQEs = 0, 0x8000000, 0x10000000
	sqLen := int(p.sqOff.array + p.sqEntries*4)
	cqLen := int(p.cqOff.cqes + p.cqEntries*16)
	sq, err := unix.Mmap(int(fd), offSQRing, sqLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(sq)
	cq, err := unix.Mmap(int(fd), offCQRing, cqLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(cq)
	sqes, err := unix.Mmap(int(fd), offSQEs, int(p.sqEntries)*64, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(sqes)

	name, err := unix.BytePtrFromString(path)
	if err != nil {
		return 0, err
	}
	// SQE 0: IORING_OP_OPENAT (18), flags IOSQE_ASYNC (1 << 4), fd AT_FDCWD,
	// addr the path, open_flags O_RDONLY|O_CLOEXEC.
	sqe := sqes[:64]
	clear(sqe)
	sqe[0] = 18
	sqe[1] = 1 << 4
	*(*int32)(unsafe.Pointer(&sqe[4])) = unix.AT_FDCWD
	*(*uint64)(unsafe.Pointer(&sqe[16])) = uint64(uintptr(unsafe.Pointer(name)))
	*(*uint32)(unsafe.Pointer(&sqe[28])) = unix.O_RDONLY | unix.O_CLOEXEC
	tail := (*uint32)(unsafe.Pointer(&sq[p.sqOff.tail]))
	mask := *(*uint32)(unsafe.Pointer(&sq[p.sqOff.ringMask]))
	t := atomic.LoadUint32(tail)
	*(*uint32)(unsafe.Pointer(&sq[p.sqOff.array+4*(t&mask)])) = 0
	atomic.StoreUint32(tail, t+1)
	const enterGetEvents = 1
	if _, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, fd, 1, 1, enterGetEvents, 0, 0); errno != 0 {
		return 0, fmt.Errorf("io_uring_enter: %w", errno)
	}
	head := (*uint32)(unsafe.Pointer(&cq[p.cqOff.head]))
	h := atomic.LoadUint32(head)
	if h == atomic.LoadUint32((*uint32)(unsafe.Pointer(&cq[p.cqOff.tail]))) {
		return 0, fmt.Errorf("io_uring: no completion")
	}
	cqMask := *(*uint32)(unsafe.Pointer(&cq[p.cqOff.ringMask]))
	res := *(*int32)(unsafe.Pointer(&cq[p.cqOff.cqes+16*(h&cqMask)+8]))
	atomic.StoreUint32(head, h+1)
	if res >= 0 {
		unix.Close(int(res))
	}
	return res, nil
}

// Capability numbers only the tests refer to.
const (
	capDacOverride   Capability = 1
	capDacReadSearch Capability = 2
)
