package bpf

import (
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The kernel versions below are upstream Linux releases that introduced each
// feature (bcc's docs/kernel-versions.md, which cites the commits). A
// distribution kernel may have backported one: Open and doctor decide by
// probing, and these versions only explain a refusal.

// helperSince: every helper captrace.c calls. TestRequirementsCoverObject
// fails when the object calls a helper missing here.
var helperSince = map[asm.BuiltinFunc]string{
	asm.FnMapLookupElem:      "3.19",
	asm.FnMapUpdateElem:      "3.19",
	asm.FnMapDeleteElem:      "3.19",
	asm.FnGetCurrentPidTgid:  "4.2",
	asm.FnGetCurrentUidGid:   "4.2",
	asm.FnGetCurrentComm:     "4.2",
	asm.FnGetCurrentCgroupId: "4.18",
	asm.FnGetStack:           "4.18",
	asm.FnJiffies64:          "5.5",
	asm.FnKtimeGetBootNs:     "5.8",
	asm.FnRingbufReserve:     "5.8",
	asm.FnRingbufSubmit:      "5.8",
	asm.FnRingbufDiscard:     "5.8",
	asm.FnRingbufQuery:       "5.8",
	asm.FnGetCurrentTaskBtf:  "5.11",
	asm.FnTaskPtRegs:         "5.15",
	// Task storage came in 5.11 for BPF LSM programs only (in the LSM's
	// security blob); tracing programs (tp_btf, fexit, kprobe) may use it,
	// without CONFIG_BPF_LSM, since 5.13.
	asm.FnTaskStorageGet: "5.13",
}

// mapTypeSince: every map type the object declares.
var mapTypeSince = map[ebpf.MapType]string{
	ebpf.Hash:        "3.19",
	ebpf.Array:       "3.19",
	ebpf.PerCPUArray: "4.6",
	ebpf.LRUHash:     "4.10",
	ebpf.RingBuf:     "5.8",
	ebpf.TaskStorage: "5.13", // outside BPF LSM: see FnTaskStorageGet
}

// TracepointSince is the release with the capability:cap_capable tracepoint
// (commit d48da4d5ed7b "security: add trace event for cap_capable", merged
// for 6.14). The one place that says so.
const TracepointSince = "6.14"

// attachSince is what each tier attaches with, on this architecture: BPF
// trampolines (fexit, tp_btf) arrived for x86_64 in 5.5 and for arm64 in 6.0.
func attachSince(tier Tier) (what, since string) {
	switch tier {
	case TierFexit:
		since := "5.5"
		if runtime.GOARCH == "arm64" {
			since = "6.0"
		}
		return "fexit/cap_capable (BPF trampolines, " + runtime.GOARCH + ")", since
	case TierTpBTF:
		return "the capability:cap_capable tracepoint (tp_btf)", TracepointSince
	default:
		return "kprobe and kretprobe on cap_capable (CONFIG_KPROBES=y)", "4.1"
	}
}

// markPrograms mark the workload's tasks (markObjects); every tier loads them.
var markPrograms = []string{"captrace_exec", "captrace_fork"}

// marksAttach is how markPrograms attach, on every tier and architecture:
// BTF-enabled raw tracepoints (no trampoline).
var marksAttach = KernelNeed{What: "tp_btf/sched_process_exec and task_newtask (BTF raw tracepoints)", Since: "5.5"}

// tierPrograms are the programs of captrace.c each tier loads.
var tierPrograms = map[Tier][]string{
	TierFexit:  append([]string{"captrace_fexit"}, markPrograms...),
	TierTpBTF:  append([]string{"captrace_tp_btf"}, markPrograms...),
	TierKprobe: append([]string{"captrace_kprobe", "captrace_kret"}, markPrograms...),
}

// KernelNeed is one kernel feature a tier uses and the Linux release that
// introduced it.
type KernelNeed struct {
	What   string          // "helper bpf_task_pt_regs", "map type RingBuf", ...
	Since  string          // "5.15"
	Helper asm.BuiltinFunc // set for helpers: doctor probes them
}

// TierRequirement is what one tier needs from the kernel, derived from the
// compiled object: the helpers its programs call, the maps it creates and its
// attach point. MinKernel is the newest of them.
type TierRequirement struct {
	Tier      Tier
	MinKernel string
	Needs     []KernelNeed
}

// helperName turns FnTaskPtRegs into bpf_task_pt_regs.
func helperName(fn asm.BuiltinFunc) string {
	name := strings.TrimPrefix(fn.String(), "Fn")
	var b strings.Builder
	b.WriteString("bpf")
	for i, r := range name {
		if r >= 'A' && r <= 'Z' {
			// BTF, ID, … stay one word: only a capital after a lower-case letter starts one.
			if i == 0 || name[i-1] < 'A' || name[i-1] > 'Z' {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Requirements derives each tier's kernel requirements from the object.
func Requirements() ([]TierRequirement, error) {
	spec, err := loadCaptrace()
	if err != nil {
		return nil, err
	}
	var out []TierRequirement
	for _, tier := range tierOrder {
		req := TierRequirement{Tier: tier}
		what, since := attachSince(tier)
		req.Needs = append(req.Needs, KernelNeed{What: what, Since: since}, marksAttach)
		helpers := map[asm.BuiltinFunc]bool{}
		maps := map[string]bool{}
		for _, name := range tierPrograms[tier] {
			prog := spec.Programs[name]
			if prog == nil {
				return nil, fmt.Errorf("the object has no program %s", name)
			}
			for _, ins := range prog.Instructions {
				if ins.IsBuiltinCall() {
					helpers[asm.BuiltinFunc(ins.Constant)] = true
				}
				if ref := ins.Reference(); ref != "" && spec.Maps[ref] != nil {
					maps[ref] = true
				}
			}
		}
		for fn := range helpers {
			since, ok := helperSince[fn]
			if !ok {
				return nil, fmt.Errorf("tier %s calls %s, which bpf/requirements.go does not date", tier, helperName(fn))
			}
			req.Needs = append(req.Needs, KernelNeed{What: "helper " + helperName(fn), Since: since, Helper: fn})
		}
		types := map[ebpf.MapType]bool{}
		for name := range maps {
			types[spec.Maps[name].Type] = true
		}
		for mt := range types {
			since, ok := mapTypeSince[mt]
			if !ok {
				return nil, fmt.Errorf("tier %s uses map type %s, which bpf/requirements.go does not date", tier, mt)
			}
			req.Needs = append(req.Needs, KernelNeed{What: "map type " + mt.String(), Since: since})
		}
		sort.SliceStable(req.Needs, func(i, j int) bool {
			if c := compareVersions(req.Needs[i].Since, req.Needs[j].Since); c != 0 {
				return c > 0
			}
			return req.Needs[i].What < req.Needs[j].What
		})
		req.MinKernel = req.Needs[0].Since
		out = append(out, req)
	}
	return out, nil
}

// compareVersions compares "5.15" and "6.0" numerically.
func compareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(pa), len(pb)); i++ {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

// minimumSummary is "fexit Linux >= 5.15 (bpf_task_pt_regs), ..." for errors.
func minimumSummary(reqs []TierRequirement) string {
	var parts []string
	for _, r := range reqs {
		parts = append(parts, fmt.Sprintf("%s: Linux >= %s (%s)", r.Tier, r.MinKernel, strings.TrimPrefix(r.Needs[0].What, "helper ")))
	}
	return strings.Join(parts, "; ")
}

// tierNeeds returns the requirement of tier, or nil.
func tierNeeds(reqs []TierRequirement, tier Tier) *TierRequirement {
	i := slices.IndexFunc(reqs, func(r TierRequirement) bool { return r.Tier == tier })
	if i < 0 {
		return nil
	}
	return &reqs[i]
}
