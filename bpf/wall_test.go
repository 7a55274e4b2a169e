package bpf

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestWallTimeFromBootTime(t *testing.T) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatal(err)
	}
	got := WallTime(uint64(ts.Nano()) - uint64(time.Second))
	if d := time.Since(got); d < time.Second || d > 2*time.Second {
		t.Errorf("an event 1 s old on the boot clock converts to %v ago", d)
	}
}
