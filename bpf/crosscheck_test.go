package bpf

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// checkTuple is what the cross-check compares: everything the kernel decided
// about one check, not who made it or when.
type checkTuple struct {
	Cap     Capability
	Capable bool
	Audit   bool
	InSetID bool
	Syscall string
}

func (c checkTuple) String() string {
	return fmt.Sprintf("%s capable=%v audit=%v insetid=%v %s", c.Cap, c.Capable, c.Audit, c.InSetID, c.Syscall)
}

// crossCheckWorkload: the seed's set-priority check, the ig guide's
// chown/chmod/chroot/mount/unshare/nsenter, exec and mmap (memory
// accounting), ptrace attach and /proc/PID/stat of another user's task,
// setuid/setgid, a seccomp filter without no_new_privs, a raw socket.
func crossCheckWorkload(t *testing.T, tier Tier, sleep string) crossCheckRun {
	tr := openTracer(t, Options{ForceTier: tier})
	col := collect(t, tr)
	cg := newCgroup(t)
	file, mnt := igGuideTargets(t)
	c := startChild(t, cg)
	for _, cmd := range []string{"privatemounts", "drop", "quietheap"} {
		if got := c.do(cmd); got != "<nil>" {
			t.Fatalf("%s: %s", cmd, got)
		}
	}
	if err := tr.Trace(cg.id, Settings{}); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct{ cmd, want string }{
		{"nice 1", "permission denied"}, // the seed's set-priority, CAP_SYS_NICE dropped
		{"raise", "<nil>"},
		{"chown " + file, "<nil>"},
		{"chmod " + file, "<nil>"},
		{"chroot /", "<nil>"},
		{"mount " + mnt, "<nil>"},
		{"unshare", "<nil>"},
		{"setns", "<nil>"},
		{"mmap", "<nil>"},
		{"exec " + sleep, "exit status 1"}, // sleep without an operand: exec and exit
		{"ptrace " + sleep, "<nil>"},
		{"setsuid 1000", "errno 0"},
		{"setsgid 1000", "errno 0"},
		{"seccomp", "<nil>"},
		{"rawsocket", "<nil>"},
	} {
		if got := c.do(step.cmd); got != step.want {
			t.Fatalf("%s (tier %s): %s, want %s", step.cmd, tier, got, step.want)
		}
	}
	c.stop()
	col.quiet(cg.id)
	tr.Close()
	// The child runs every step on its locked main thread (pid == tid). Its
	// other threads are the Go runtime's (new Ms, the heap): their checks
	// depend on scheduling, not on the workload or the tier. Its own mmaps
	// are the step's one plus, now and then, the Go allocator's (persistent
	// chunks): compared by kind, not by count.
	w := crossCheckRun{exact: map[checkTuple]int{}, allocator: map[checkTuple]int{}}
	for _, ev := range col.of(cg.id) {
		if int(ev.Pid) == c.pid && int(ev.Tid) != c.pid {
			t.Logf("tier %s: not compared, a Go runtime thread of the child:%s", tier, describe([]Event{ev}))
			continue
		}
		if !ev.InSetIDKnown {
			t.Fatalf("tier %s: insetid unknown (kallsyms unreadable?):%s", tier, describe([]Event{ev}))
		}
		k := checkTuple{ev.Cap, ev.Capable, ev.Audit, ev.InSetID, SyscallName(ev.Syscall)}
		if int(ev.Pid) == c.pid && k.Syscall == "SYS_MMAP" {
			w.allocator[k]++
			continue
		}
		w.exact[k]++
		w.events = append(w.events, ev)
	}
	return w
}

// crossCheckRun is what one tier saw of the workload.
type crossCheckRun struct {
	exact     map[checkTuple]int // compared as a multiset
	allocator map[checkTuple]int // the Go child's mmaps: compared as a set
	events    []Event
}

// memoryAccountingSyscalls are where cap_vm_enough_memory checks CAP_SYS_ADMIN.
var memoryAccountingSyscalls = []string{"SYS_MMAP", "SYS_BRK", "SYS_MPROTECT", "SYS_EXECVE", "SYS_CLONE", "SYS_CLONE3", "SYS_MREMAP", "SYS_FORK", "SYS_VFORK"}

// invisibleReason says why a check one tier saw cannot be seen by the other,
// or "" if it should have been. fexit cannot see a call that the compiler
// inlined: on kernels that inline cap_capable into cap_vm_enough_memory,
// memory accounting reaches only the tracepoint (which the inlined body still
// fires).
func invisibleReason(c checkTuple, onlyIn Tier, fexitSawMemoryAccounting bool) string {
	if onlyIn == TierTpBTF && !fexitSawMemoryAccounting && c.Cap == capSysAdmin && !c.Audit &&
		slices.Contains(memoryAccountingSyscalls, c.Syscall) {
		return "memory accounting: cap_capable is inlined into cap_vm_enough_memory on this kernel, so fexit/cap_capable never runs for it"
	}
	return ""
}

// TestTierAuditCrossCheck runs one workload under fexit (audit and insetid
// read from opts) and under tp_btf (derived from the stack against kallsyms)
// on the same kernel: the multisets of (cap, capable, audit, insetid, syscall)
// must be equal. The kernel matrix runs it on the newest Debian kernel, where
// both tiers load; a kernel without one of them skips, naming it.
func TestTierAuditCrossCheck(t *testing.T) {
	openTracer(t, Options{}).Close() // root and a tracer at all
	for _, p := range Probe() {
		if p.Tier == TierKprobe || p.Err == nil {
			continue
		}
		// The host may forbid trampolines (EPERM, reworded); the matrix's
		// guests allow them, so there only a missing feature skips.
		var trampolinesRefused *explained
		inGuest := os.Getenv("CAPTRACE_KERNEL_GUEST") == "1"
		if errors.Is(p.Err, ebpf.ErrNotSupported) || (!inGuest && errors.As(p.Err, &trampolinesRefused)) {
			t.Skipf("kernel lacks tier %s, nothing to cross-check against: %v", p.Tier, p.Err)
		}
		t.Fatalf("tier %s refused for a reason other than a missing kernel feature: %v", p.Tier, p.Err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("the workload runs sleep: %v", err)
	}
	fexitRun := crossCheckWorkload(t, TierFexit, sleep)
	tpRun := crossCheckWorkload(t, TierTpBTF, sleep)
	fexit, tp := fexitRun.exact, tpRun.exact

	fexitSawMemoryAccounting := len(fexitRun.allocator) > 0
	for _, ev := range fexitRun.events {
		if ev.Cap == capSysAdmin && !ev.Audit && slices.Contains(memoryAccountingSyscalls, SyscallName(ev.Syscall)) {
			fexitSawMemoryAccounting = true
		}
	}
	keys := map[checkTuple]bool{}
	for k := range fexit {
		keys[k] = true
	}
	for k := range tp {
		keys[k] = true
	}
	var sorted []checkTuple
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].String() < sorted[j].String() })

	var table, invisible, diffs []string
	for _, k := range sorted {
		nf, nt := fexit[k], tp[k]
		table = append(table, fmt.Sprintf("%4d %4d  %s", nf, nt, k))
		if nf == nt {
			continue
		}
		onlyIn := TierTpBTF
		if nf > nt {
			onlyIn = TierFexit
		}
		if nf == 0 || nt == 0 {
			if why := invisibleReason(k, onlyIn, fexitSawMemoryAccounting); why != "" {
				invisible = append(invisible, fmt.Sprintf("%s ×%d, only %s: %s", k, max(nf, nt), onlyIn, why))
				continue
			}
		}
		diffs = append(diffs, fmt.Sprintf("%s: fexit %d, tp_btf %d", k, nf, nt))
	}
	var allocator []string
	for k, n := range fexitRun.allocator {
		allocator = append(allocator, fmt.Sprintf("%4d %4d  %s", n, tpRun.allocator[k], k))
		if tpRun.allocator[k] == 0 {
			diffs = append(diffs, fmt.Sprintf("%s (the child's mmap): only fexit", k))
		}
	}
	for k, n := range tpRun.allocator {
		if fexitRun.allocator[k] == 0 {
			allocator = append(allocator, fmt.Sprintf("%4d %4d  %s", 0, n, k))
			if why := invisibleReason(k, TierTpBTF, fexitSawMemoryAccounting); why != "" {
				invisible = append(invisible, fmt.Sprintf("%s ×%d (the child's mmap), only tp_btf: %s", k, n, why))
			} else {
				diffs = append(diffs, fmt.Sprintf("%s (the child's mmap): only tp_btf", k))
			}
		}
	}
	sort.Strings(allocator)
	t.Logf("compared multiset (fexit tp_btf  cap capable audit insetid syscall):\n%s", strings.Join(table, "\n"))
	t.Logf("compared as a set, the Go child's own mmaps (its one mmap step plus its allocator's):\n%s", strings.Join(allocator, "\n"))
	for _, s := range invisible {
		t.Logf("not compared, one tier cannot see it: %s", s)
	}
	t.Logf("%d differences", len(diffs))
	if len(diffs) > 0 {
		t.Errorf("the tiers disagree:\n%s", strings.Join(diffs, "\n"))
	}
}
