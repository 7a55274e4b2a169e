package bpf

import (
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// wallOffset caches wall time minus CLOCK_BOOTTIME, in ns. Go reads
// CLOCK_BOOTTIME with a real syscall, not the vDSO, and even time.Now costs a
// sixth of the reader's time per event; so the offset is refreshed when the
// events' own clock has moved wallRefresh past the last refresh: a step of the
// wall clock (NTP) or a suspend is picked up within that much event time.
var wallOffset struct {
	ns        atomic.Int64
	refreshed atomic.Int64 // CLOCK_BOOTTIME ns of the last refresh, 0: never
}

const wallRefresh = time.Second

// WallTime converts an Event's KtimeNs (the kernel's CLOCK_BOOTTIME, which
// keeps counting through suspend) to wall-clock time.
func WallTime(ktimeNs uint64) time.Time {
	k := int64(ktimeNs)
	if last := wallOffset.refreshed.Load(); last == 0 || k-last >= int64(wallRefresh) {
		now := time.Now()
		var boot unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot); err != nil {
			return now
		}
		wallOffset.ns.Store(now.UnixNano() - boot.Nano())
		wallOffset.refreshed.Store(max(boot.Nano(), 1))
	}
	return time.Unix(0, k+wallOffset.ns.Load())
}
