package main

import (
	"time"

	"golang.org/x/sys/unix"
)

// wallTime converts an event's kernel time to wall-clock time.
//
// TODO(merge): replace with bpf.WallTime once the bpf room provides it.
var wallTime = bootTimeToWall

// bootTimeToWall converts a CLOCK_BOOTTIME timestamp (bpf_ktime_get_boot_ns)
// to wall-clock time by reading both clocks now: the event's age on the boot
// clock is subtracted from the current wall time. Reading both per call keeps
// it right across NTP steps and suspend.
func bootTimeToWall(ktimeNs uint64) time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return now
	}
	age := time.Duration(ts.Nano() - int64(ktimeNs))
	return now.Add(-age)
}
