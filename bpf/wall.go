package bpf

import (
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// wallOffset caches wall time minus CLOCK_BOOTTIME, in ns. Go reads
// CLOCK_BOOTTIME with a real syscall, not the vDSO, so the reader refreshes
// the offset at most once per wallRefresh instead of once per event; a step
// of the wall clock (NTP) or a suspend is picked up within that time.
var wallOffset struct {
	ns        atomic.Int64
	refreshed atomic.Int64 // monotonic ns since wallEpoch of the last refresh, 0: never
}

var wallEpoch = time.Now()

const wallRefresh = time.Second

// WallTime converts an Event's KtimeNs (the kernel's CLOCK_BOOTTIME, which
// keeps counting through suspend) to wall-clock time.
func WallTime(ktimeNs uint64) time.Time {
	now := time.Now()
	mono := int64(now.Sub(wallEpoch)) + 1 // +1: never 0, which means "never refreshed"
	if last := wallOffset.refreshed.Load(); last == 0 || mono-last >= int64(wallRefresh) {
		var boot unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot); err != nil {
			return now
		}
		wallOffset.ns.Store(now.UnixNano() - boot.Nano())
		wallOffset.refreshed.Store(mono)
	}
	return time.Unix(0, int64(ktimeNs)+wallOffset.ns.Load())
}
