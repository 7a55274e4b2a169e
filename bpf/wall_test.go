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

// A stale offset (the wall clock stepped) is replaced once the events' own
// clock has moved wallRefresh past the last refresh, without reading a
// clock per event before that.
func TestWallTimeRefreshesOnEventClock(t *testing.T) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatal(err)
	}
	k := uint64(ts.Nano())
	WallTime(k + uint64(wallRefresh)) // refreshed now, at about k
	good := wallOffset.ns.Load()
	wallOffset.ns.Store(good - int64(time.Hour)) // as if the wall clock had stepped
	if d := time.Since(WallTime(k)); d < 59*time.Minute {
		t.Errorf("within wallRefresh of event time the cached offset holds: got %v ago, want about an hour", d)
	}
	got := WallTime(k + 3*uint64(wallRefresh))
	if d := got.Sub(time.Now()); d < time.Second || d > 4*time.Second {
		t.Errorf("an event 3 s ahead on the boot clock after the refresh converts to %v from now, want 1-4 s", d)
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
