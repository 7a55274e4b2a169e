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

// WallTime with its cached offset, against reading both clocks per event.
func BenchmarkWallTime(b *testing.B) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		b.Fatal(err)
	}
	k := uint64(ts.Nano())
	b.Run("cached-offset", func(b *testing.B) {
		for range b.N {
			WallTime(k)
		}
	})
	b.Run("baseline-two-clocks", func(b *testing.B) {
		for range b.N {
			var boot unix.Timespec
			now := time.Now()
			unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot)
			_ = now.Add(-time.Duration(boot.Nano() - int64(k)))
		}
	})
}
