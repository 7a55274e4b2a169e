package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
)

// RequirementFinding is what probing the running kernel found for one tier:
// the helpers and map types it lacks, each with the release that has them.
type RequirementFinding struct {
	Tier      Tier
	MinKernel string
	Missing   []string // "helper bpf_task_pt_regs (Linux >= 5.15)"
	// Err is set when the probes themselves failed (not root, no bpf()):
	// then Missing says nothing.
	Err error
}

// CheckRequirements probes the running kernel for every helper and map type
// each tier's programs use (cilium/ebpf's features package). Tracing programs
// (fexit, tp_btf) get their helpers from the same table as kprobes
// (bpf_tracing_func_proto), and features cannot probe tracing programs
// without attaching: helpers are probed as a kprobe program's.
func CheckRequirements() ([]RequirementFinding, error) {
	reqs, err := Requirements()
	if err != nil {
		return nil, err
	}
	var out []RequirementFinding
	for _, r := range reqs {
		f := RequirementFinding{Tier: r.Tier, MinKernel: r.MinKernel}
		var errs []error
		for _, n := range r.Needs {
			var err error
			switch {
			case n.Helper != 0:
				err = features.HaveProgramHelper(ebpf.Kprobe, n.Helper)
			case strings.HasPrefix(n.What, "map type "):
				err = haveMapType(strings.TrimPrefix(n.What, "map type "))
			default:
				continue // the attach point: loading the tier says
			}
			switch {
			case errors.Is(err, ebpf.ErrNotSupported):
				f.Missing = append(f.Missing, fmt.Sprintf("%s (Linux >= %s)", n.What, n.Since))
			case err != nil:
				errs = append(errs, fmt.Errorf("probing %s: %w", n.What, err))
			}
		}
		f.Err = errors.Join(errs...)
		out = append(out, f)
	}
	return out, nil
}

func haveMapType(name string) error {
	for mt := range mapTypeSince {
		if mt.String() == name {
			return features.HaveMapType(mt)
		}
	}
	return fmt.Errorf("unknown map type %s", name)
}

// kernelRequirement is what a kernel needs for at least one tier to load,
// from the object's own requirements.
func kernelRequirement() string {
	msg := "captrace needs a kernel with BTF (CONFIG_DEBUG_INFO_BTF=y, /sys/kernel/btf/vmlinux) and one of: " +
		"fexit/cap_capable (BPF trampolines), the capability:cap_capable tracepoint (tp_btf), or CONFIG_KPROBES=y (kprobe)"
	reqs, err := Requirements()
	if err != nil {
		return msg
	}
	msg += "; minimum upstream kernels: " + minimumSummary(reqs)
	findings, err := CheckRequirements()
	if err != nil {
		return msg
	}
	var missing []string
	for _, f := range findings {
		for _, m := range f.Missing {
			if !strings.Contains(strings.Join(missing, ","), m) {
				missing = append(missing, m)
			}
		}
	}
	if len(missing) > 0 {
		msg += "; this kernel lacks " + strings.Join(missing, ", ")
	}
	return msg
}
