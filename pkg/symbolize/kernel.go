package symbolize

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// ksym is one text symbol of /proc/kallsyms.
type ksym struct {
	addr   uint64
	name   string
	module string // "" for the kernel image, else the module ("bpf" for BPF programs)
}

// Kernel resolves kernel addresses from a snapshot of /proc/kallsyms.
// Safe for concurrent use after NewKernel.
type Kernel struct {
	syms []ksym // sorted by addr
}

// NewKernel reads path (normally /proc/kallsyms). Addresses all zero mean
// kernel.kptr_restrict hides them from this process: the error says so.
func NewKernel(path string) (*Kernel, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading kernel symbols: %w (run as root)", err)
	}
	defer f.Close()
	k, err := parseKallsyms(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

func parseKallsyms(r io.Reader) (*Kernel, error) {
	k := &Kernel{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	nonZero := false
	for sc.Scan() {
		line := sc.Bytes()
		// "ffffffff81abd6b0 T cap_capable" or "... t name\t[module]"
		addrEnd := bytes.IndexByte(line, ' ')
		if addrEnd < 0 || len(line) < addrEnd+4 {
			continue
		}
		switch line[addrEnd+1] {
		case 't', 'T', 'w', 'W':
		default:
			continue
		}
		addr, err := strconv.ParseUint(string(line[:addrEnd]), 16, 64)
		if err != nil {
			continue
		}
		nonZero = nonZero || addr != 0
		rest := line[addrEnd+3:]
		name, mod, _ := bytes.Cut(rest, []byte("\t"))
		s := ksym{addr: addr, name: string(name)}
		if len(mod) > 2 && mod[0] == '[' {
			s.module = string(mod[1 : len(mod)-1])
		}
		// __pfx_ symbols are the padding before a function, not code.
		if strings.HasPrefix(s.name, "__pfx_") {
			continue
		}
		k.syms = append(k.syms, s)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !nonZero {
		return nil, fmt.Errorf("every address is 0: kernel.kptr_restrict hides them (run as root with kernel.kptr_restrict <= 1)")
	}
	slices.SortStableFunc(k.syms, func(a, b ksym) int {
		switch {
		case a.addr < b.addr:
			return -1
		case a.addr > b.addr:
			return 1
		}
		return 0
	})
	return k, nil
}

// lookup returns the symbol holding addr, if any.
func (k *Kernel) lookup(addr uint64) (ksym, bool) {
	i, found := slices.BinarySearchFunc(k.syms, addr, func(s ksym, a uint64) int {
		switch {
		case s.addr < a:
			return -1
		case s.addr > a:
			return 1
		}
		return 0
	})
	if !found {
		i--
	}
	if i < 0 {
		return ksym{}, false
	}
	// Of several names at one address, the last sorted is as good as any.
	return k.syms[i], true
}

// Frame is one kernel frame: "symbol+0xoff", "symbol+0xoff [module]", or
// "[unknown] 0x<addr> (kernel)".
func (k *Kernel) Frame(addr uint64) string {
	s, ok := k.lookup(addr)
	if !ok {
		return fmt.Sprintf("[unknown] 0x%x (kernel)", addr)
	}
	if s.module != "" {
		return fmt.Sprintf("%s+0x%x [%s]", s.name, addr-s.addr, s.module)
	}
	return fmt.Sprintf("%s+0x%x", s.name, addr-s.addr)
}

// machinery are the frames between cap_capable and the BPF program, which
// differ by attach tier (and by other programs on the same hook): they are
// dropped so every tier gives the same stack, starting at cap_capable's
// caller.
var machinery = map[string]bool{
	"cap_capable":                      true,
	"bpf_trace_run1":                   true,
	"bpf_trace_run2":                   true,
	"bpf_trace_run3":                   true,
	"bpf_trace_run4":                   true,
	"bpf_trace_run5":                   true,
	"__bpf_trace_cap_capable":          true,
	"__traceiter_cap_capable":          true,
	"trace_call_bpf":                   true,
	"kprobe_perf_func":                 true,
	"kretprobe_perf_func":              true,
	"kprobe_dispatcher":                true,
	"kretprobe_dispatcher":             true,
	"kretprobe_trace_func":             true,
	"__kretprobe_trampoline":           true,
	"__kretprobe_trampoline_handler":   true,
	"kretprobe_trampoline":             true,
	"kretprobe_rethook_handler":        true,
	"rethook_trampoline_handler":       true,
	"arch_rethook_trampoline":          true,
	"arch_rethook_trampoline_callback": true,
	"trampoline_handler":               true,
	"pre_handler_kretprobe":            true,
	"aggr_pre_handler":                 true,
	"kprobe_ftrace_handler":            true,
	"kprobe_int3_handler":              true,
	"exc_int3":                         true,
	"asm_exc_int3":                     true,
	"opt_pre_handler":                  true,
	"optimized_callback":               true,
	"ftrace_trampoline":                true,
	"__bpf_prog_enter":                 true,
	"__bpf_prog_exit":                  true,
	"__bpf_prog_enter_recur":           true,
	"__bpf_prog_exit_recur":            true,
}

// machineryFrame says whether s is attach machinery (see machinery), a BPF
// program or a BPF trampoline.
func machineryFrame(s ksym, ok bool) bool {
	if !ok {
		return false
	}
	return machinery[s.name] || s.module == "bpf" ||
		strings.HasPrefix(s.name, "bpf_prog_") || strings.HasPrefix(s.name, "bpf_trampoline_")
}

// maxMachinery bounds how many leading frames can be attach machinery.
const maxMachinery = 12

// Stack symbolizes a kernel stack, innermost first, dropping the leading
// attach machinery so that the first frame is cap_capable's caller.
func (k *Kernel) Stack(addrs []uint64) []string {
	// The last machinery frame among the first few: BPF trampolines may
	// not be in kallsyms at all, so unknown frames before it go too.
	start := 0
	for i, a := range addrs[:min(len(addrs), maxMachinery)] {
		if s, ok := k.lookup(a); machineryFrame(s, ok) {
			start = i + 1
		}
	}
	out := make([]string, 0, len(addrs)-start)
	for _, a := range addrs[start:] {
		out = append(out, k.Frame(a))
	}
	return out
}
