package bpf

import (
	"errors"
	"runtime"
	"testing"
)

func TestCapabilityNames(t *testing.T) {
	for c, want := range map[Capability]string{0: "CAP_CHOWN", 21: "CAP_SYS_ADMIN", 23: "CAP_SYS_NICE", 40: "CAP_CHECKPOINT_RESTORE", 41: "CAP_41", -1: "CAP_-1"} {
		if got := c.String(); got != want {
			t.Errorf("Capability(%d) = %s, want %s", c, got, want)
		}
	}
	for i, n := range capNames {
		if n == "" {
			t.Errorf("capability %d has no name", i)
		}
	}
}

func TestSyscallNames(t *testing.T) {
	want := map[string]map[int32]string{
		"amd64": {90: "SYS_CHMOD", 92: "SYS_CHOWN", 141: "SYS_SETPRIORITY", 161: "SYS_CHROOT", 165: "SYS_MOUNT", 272: "SYS_UNSHARE", 308: "SYS_SETNS"},
		"arm64": {140: "SYS_SETPRIORITY", 97: "SYS_UNSHARE", 268: "SYS_SETNS", 40: "SYS_MOUNT"},
	}[runtime.GOARCH]
	for nr, name := range want {
		if got := SyscallName(nr); got != name {
			t.Errorf("SyscallName(%d) = %s, want %s", nr, got, name)
		}
	}
	if got := SyscallName(-1); got != "" {
		t.Errorf("SyscallName(-1) = %q", got)
	}
	if got := SyscallName(100000); got != "SYS_100000" {
		t.Errorf("SyscallName(100000) = %q", got)
	}
}

func TestDecodeEvent(t *testing.T) {
	b := make([]byte, eventSize)
	b[0], b[8], b[16], b[20], b[24], b[28], b[32], b[36] = 7, 9, 11, 12, 13, 14, 23, 141
	b[40], b[41], b[42], b[43] = 1, 0, 1, 1
	copy(b[44:], "nice")
	var ev Event
	decodeEvent(b, &ev)
	if ev.CgroupID != 7 || ev.KtimeNs != 9 || ev.Pid != 11 || ev.Tid != 12 || ev.Uid != 13 || ev.Gid != 14 ||
		ev.Cap != capSysNice || ev.Syscall != 141 || !ev.Capable || ev.Audit || !ev.InSetID || !ev.InSetIDKnown ||
		commString(ev.Comm) != "nice" {
		t.Errorf("decoded %+v", ev)
	}
	if n := testing.AllocsPerRun(100, func() { decodeEvent(b, &ev) }); n != 0 {
		t.Errorf("decodeEvent allocates %v times", n)
	}
}

func TestRingSizeValidated(t *testing.T) {
	for _, size := range []int{1000, 4096 + 4096/2, 12288} {
		_, err := Open(Options{RingBufferBytes: size})
		if oe := (*OptionError)(nil); !errors.As(err, &oe) || oe.Field != "RingBufferBytes" {
			t.Errorf("RingBufferBytes=%d: %v", size, err)
		}
	}
}
