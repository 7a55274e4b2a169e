package bpf

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Range kinds (enum caller_kind in captrace.c).
const (
	kindSecurityCapable = uint32(captraceCallerKindKIND_SECURITY_CAPABLE)
	kindCapCapable      = uint32(captraceCallerKindKIND_CAP_CAPABLE)
	kindNoauditWrapper  = uint32(captraceCallerKindKIND_NOAUDIT_WRAPPER)
	kindVMEnough        = uint32(captraceCallerKindKIND_VM_ENOUGH)
	kindTransparent     = uint32(captraceCallerKindKIND_TRANSPARENT)
	kindSetidWrapper    = uint32(captraceCallerKindKIND_SETID_WRAPPER)
)

// auditSymbols are the functions whose frames decide the audit flag on the
// tracepoint tier. Every kernel path that passes CAP_OPT_NOAUDIT goes through
// one of the wrappers (kernel/capability.c) or memory accounting
// (cap_vm_enough_memory, inlined into security_vm_enough_memory_mm on most
// builds). Symbols missing from a kernel are skipped.
var auditSymbols = []struct {
	name     string
	kind     uint32
	required bool
}{
	{"security_capable", kindSecurityCapable, true},
	{"cap_capable", kindCapCapable, true},
	{"ns_capable_noaudit", kindNoauditWrapper, true},
	{"has_ns_capability_noaudit", kindNoauditWrapper, false},
	{"has_capability_noaudit", kindNoauditWrapper, false},
	{"ptracer_capable", kindNoauditWrapper, false},
	{"ns_capable_setid", kindSetidWrapper, true},
	{"security_vm_enough_memory_mm", kindVMEnough, false},
	{"cap_vm_enough_memory", kindVMEnough, false},
	{"__vm_enough_memory", kindVMEnough, false},
	{"ns_capable_common", kindTransparent, false},
}

// auditWalkCaps are the capabilities some kernel code checks without audit
// (found in the kernel source: seccomp, sysctl, ptrace, oom, IMA, kallsyms,
// the BPF JIT, xfs, vsock, listmount) or in setid (ns_capable_setid: SETUID,
// SETGID). Only their checks pay for the stack walk; every other capability
// is reported audited and not in setid.
var auditWalkCaps = []Capability{capSetgid, capSetuid, capNetAdmin, capNetRaw, capSysRawio,
	capSysPtrace, capSysAdmin, capSysRes, capSyslog, capPerfmon, capBPF}

// resolveAuditRanges reads [start, end) of every audit symbol from
// /proc/kallsyms; a symbol ends where the next text symbol begins.
func resolveAuditRanges(path string) ([]auditRange, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	want := map[string]int{}
	for i, s := range auditSymbols {
		want[s.name] = i
	}
	starts := make([]uint64, len(auditSymbols))
	var text []uint64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || (fields[1] != "t" && fields[1] != "T") {
			continue
		}
		addr, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil || addr == 0 {
			continue
		}
		text = append(text, addr)
		if i, ok := want[fields[2]]; ok && len(fields) == 3 && starts[i] == 0 {
			starts[i] = addr
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(text) == 0 {
		return nil, fmt.Errorf("%s shows no addresses (kernel.kptr_restrict, or not root)", path)
	}
	sort.Slice(text, func(i, j int) bool { return text[i] < text[j] })

	var ranges []auditRange
	for i, s := range auditSymbols {
		if starts[i] == 0 {
			if s.required {
				return nil, fmt.Errorf("%s has no symbol %s", path, s.name)
			}
			continue
		}
		n := sort.Search(len(text), func(k int) bool { return text[k] > starts[i] })
		if n == len(text) {
			return nil, fmt.Errorf("%s: no symbol after %s", path, s.name)
		}
		ranges = append(ranges, auditRange{Start: starts[i], End: text[n], Kind: s.kind})
	}
	return ranges, nil
}

func walkCapMask() uint64 {
	var m uint64
	for _, c := range auditWalkCaps {
		m |= 1 << uint(c)
	}
	return m
}
