package bpf

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/captrace/captrace/internal/privtest"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The requirements come from the object: every helper, map type and attach
// point each tier's programs use is dated, and the minimum is the newest.
func TestRequirementsCoverObject(t *testing.T) {
	reqs, err := Requirements()
	if err != nil {
		t.Fatal(err)
	}
	fexitMin := "5.15"
	if runtime.GOARCH == "arm64" {
		fexitMin = "6.0"
	}
	want := map[Tier]string{TierFexit: fexitMin, TierTpBTF: TracepointSince, TierKprobe: "5.15"}
	for _, r := range reqs {
		var lines []string
		for _, n := range r.Needs {
			lines = append(lines, n.What+" "+n.Since)
		}
		t.Logf("%s: Linux >= %s\n  %s", r.Tier, r.MinKernel, strings.Join(lines, "\n  "))
		if r.MinKernel != want[r.Tier] {
			t.Errorf("%s: minimum %s, want %s", r.Tier, r.MinKernel, want[r.Tier])
		}
		has := func(what string) bool {
			for _, n := range r.Needs {
				if n.What == what {
					return true
				}
			}
			return false
		}
		for _, what := range []string{"helper bpf_task_pt_regs", "helper bpf_get_current_task_btf", "helper bpf_ringbuf_reserve", "map type RingBuf"} {
			if !has(what) {
				t.Errorf("%s: %s not among its needs", r.Tier, what)
			}
		}
		if r.Tier == TierTpBTF && !has("helper bpf_get_stack") {
			t.Errorf("tp_btf walks the stack for the audit flag, yet bpf_get_stack is not among its needs")
		}
	}
	if minimumSummary(reqs) == "" {
		t.Error("empty summary")
	}
}

func TestHelperNames(t *testing.T) {
	for fn, want := range map[asm.BuiltinFunc]string{
		asm.FnTaskPtRegs:        "bpf_task_pt_regs",
		asm.FnGetCurrentTaskBtf: "bpf_get_current_task_btf",
		asm.FnKtimeGetBootNs:    "bpf_ktime_get_boot_ns",
		asm.FnJiffies64:         "bpf_jiffies64",
	} {
		if got := helperName(fn); got != want {
			t.Errorf("helperName(%v) = %s, want %s", fn, got, want)
		}
	}
}

// On this kernel every tier that loads has all its helpers and map types, as
// cilium/ebpf's features package probes them.
func TestCheckRequirements(t *testing.T) {
	privtest.Root(t)
	findings, err := CheckRequirements()
	if err != nil {
		t.Fatal(err)
	}
	loads := map[Tier]bool{}
	for _, p := range Probe() {
		loads[p.Tier] = p.Err == nil
	}
	for _, f := range findings {
		t.Logf("%s: Linux >= %s, missing %v, probe errors %v", f.Tier, f.MinKernel, f.Missing, f.Err)
		if f.Err != nil {
			t.Errorf("%s: probing failed: %v", f.Tier, f.Err)
		}
		if loads[f.Tier] && len(f.Missing) > 0 {
			t.Errorf("%s loads, yet probing says it lacks %v", f.Tier, f.Missing)
		}
	}
}

// An EPERM while creating a map is a memlock limit on old kernels and must
// say so; only the fexit program's own EPERM means trampolines are refused.
func TestExplainLoadKeepsMemlock(t *testing.T) {
	const hint = " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)"
	mapErr := fmt.Errorf("field Filter: map cgroup_filter: map create: %w"+hint, unix.EPERM)
	progErr := fmt.Errorf("field Prog: program captrace_fexit: load program: %w"+hint, unix.EPERM)
	for _, tier := range tierOrder {
		got := explainLoad(tier, mapErr)
		if !errors.Is(got, unix.EPERM) || !strings.Contains(got.Error(), "RLIMIT_MEMLOCK") || !strings.Contains(got.Error(), "LimitMEMLOCK=infinity") || strings.Contains(got.Error(), "trampoline") {
			t.Errorf("%s, map EPERM: %v", tier, got)
		}
	}
	if got := explainLoad(TierFexit, progErr); !errors.Is(got, unix.EPERM) || !strings.Contains(got.Error(), "trampoline") || strings.Contains(got.Error(), "MEMLOCK may be too low") {
		t.Errorf("fexit program EPERM: %v", got)
	}
}
