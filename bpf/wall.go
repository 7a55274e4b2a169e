package bpf

import (
	"time"

	"golang.org/x/sys/unix"
)

// WallTime converts an Event's KtimeNs (the kernel's CLOCK_BOOTTIME, which
// keeps counting through suspend) to wall-clock time, using the offset
// between the two clocks now.
func WallTime(ktimeNs uint64) time.Time {
	var boot unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot); err != nil {
		return now
	}
	return now.Add(-time.Duration(boot.Nano() - int64(ktimeNs)))
}
