package privilege

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The bits are the kernel's (golang.org/x/sys/unix mirrors linux/capability.h).
func TestBitsMatchTheKernel(t *testing.T) {
	want := map[string]uint{"CAP_BPF": unix.CAP_BPF, "CAP_PERFMON": unix.CAP_PERFMON, "CAP_SYSLOG": unix.CAP_SYSLOG}
	if len(Required) != len(want) {
		t.Fatalf("Required has %d capabilities, want %d", len(Required), len(want))
	}
	for _, c := range Required {
		if bit, ok := want[c.Name]; !ok || bit != c.Bit {
			t.Errorf("%s: bit %d, want %d", c.Name, c.Bit, bit)
		}
		if c.Why == "" {
			t.Errorf("%s: no reason", c.Name)
		}
	}
}

func TestSetprivBoundingSet(t *testing.T) {
	if got := SetprivBoundingSet(); got != "-all,+syslog,+perfmon,+bpf" {
		t.Errorf("SetprivBoundingSet() = %q", got)
	}
	if got := SetprivBoundingSet("CAP_PERFMON"); got != "-all,+syslog,+bpf" {
		t.Errorf("SetprivBoundingSet(CAP_PERFMON) = %q", got)
	}
}

func TestCompare(t *testing.T) {
	eff, err := effectiveFromStatus("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n")
	if err != nil {
		t.Fatal(err)
	}
	r := Compare(eff)
	if len(r.Missing) != 0 || r.Excess != 37 || r.MissingError() != nil {
		t.Errorf("root without CAP_SYS_RESOURCE: %+v", r)
	}
	// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, not CAP_SYSLOG.
	r = Compare(1<<unix.CAP_SYS_ADMIN | 1<<unix.CAP_SYSLOG)
	if len(r.Missing) != 0 || r.Excess != 1 {
		t.Errorf("CAP_SYS_ADMIN + CAP_SYSLOG: %+v", r)
	}
	if r = Compare(1 << unix.CAP_SYS_ADMIN); len(r.Missing) != 1 || r.Missing[0].Name != "CAP_SYSLOG" {
		t.Errorf("CAP_SYS_ADMIN alone: %+v", r)
	}
	r = Compare(1<<unix.CAP_BPF | 1<<unix.CAP_SYSLOG)
	err = r.MissingError()
	if r.Excess != 0 || len(r.Missing) != 1 || err == nil ||
		!strings.Contains(err.Error(), "captrace lacks CAP_PERFMON (load and attach tracing programs") ||
		!strings.Contains(err.Error(), "CapabilityBoundingSet=CAP_SYSLOG CAP_PERFMON CAP_BPF") {
		t.Errorf("without CAP_PERFMON: %+v, %v", r, err)
	}
}
