package symbolize

import (
	"strings"
	"testing"
)

// A kallsyms excerpt in the kernel's format, with the frames each tier puts
// above cap_capable's caller.
const kallsymsExcerpt = `ffffffff81000000 T _stext
ffffffff81380d40 T __pfx___x64_sys_setpriority
ffffffff81380d50 T __x64_sys_setpriority
ffffffff81380e00 t __do_sys_setpriority
ffffffff814ca8f0 T bpf_trace_run5
ffffffff814d0000 T trace_call_bpf
ffffffff814d1000 t kretprobe_perf_func
ffffffff814d2000 t kretprobe_dispatcher
ffffffff814d3000 T __kretprobe_trampoline
ffffffff81abce20 T __traceiter_cap_capable
ffffffff81abd6b0 T cap_capable
ffffffff81ac2600 T security_capable
ffffffff81ac2700 T capable
ffffffffc0001000 t bpf_prog_6deef7357e7b4530_captrace_tp_btf	[bpf]
ffffffffc0002000 t bpf_trampoline_6442491234	[bpf]
ffffffffc0100000 t some_driver_fn	[overlay]
`

func TestKernelStackSameOnEveryTier(t *testing.T) {
	k, err := parseKallsyms(strings.NewReader(kallsymsExcerpt))
	if err != nil {
		t.Fatal(err)
	}
	caller := []uint64{0xffffffff81ac2600 + 0x3b, 0xffffffff81ac2700 + 0x2e, 0xffffffff81380e00 + 0x9e}
	want := "security_capable+0x3b;capable+0x2e;__do_sys_setpriority+0x9e"
	for name, top := range map[string][]uint64{
		"tp_btf":              {0xffffffffc0001010, 0xffffffff814ca8f0 + 0x50, 0xffffffff81abd6b0 + 0x20},
		"tp_btf+other prog":   {0xffffffffc0001010, 0xffffffff814ca8f0 + 0x50, 0xffffffff81abce20 + 0x10, 0xffffffff81abd6b0 + 0x20},
		"fexit":               {0xffffffffc0001010, 0xffffffffc0002040},
		"fexit, trampoline ?": {0xffffffffc0001010, 0xffffffffc0f00000, 0xffffffff81abd6b0 + 5},
		"kretprobe":           {0xffffffffc0001010, 0xffffffff814d0010, 0xffffffff814d1010, 0xffffffff814d2010, 0xffffffff814d3010},
		"none":                nil,
	} {
		got := strings.Join(k.Stack(append(top, caller...)), ";")
		if got != want {
			t.Errorf("%s: %s, want %s", name, got, want)
		}
	}
	if got := k.Frame(0xffffffffc0100010); got != "some_driver_fn+0x10 [overlay]" {
		t.Errorf("module frame: %s", got)
	}
	if got := k.Frame(0x1000); got != "[unknown] 0x1000 (kernel)" {
		t.Errorf("unknown frame: %s", got)
	}
}

func TestKallsymsHidden(t *testing.T) {
	_, err := parseKallsyms(strings.NewReader("0000000000000000 T _stext\n0000000000000000 T cap_capable\n"))
	if err == nil || !strings.Contains(err.Error(), "kptr_restrict") {
		t.Fatalf("zeroed addresses: %v, want an error naming kernel.kptr_restrict", err)
	}
}

func TestCleanNames(t *testing.T) {
	for in, want := range map[string]string{
		"main.main":                   "main.main",
		"evil;frame":                  `evil\x3bframe`,
		"ctl\nline":                   `ctl\x0aline`,
		"bad\xffutf8":                 `bad\xffutf8`,
		strings.Repeat("a", 300):      strings.Repeat("a", maxName) + "…",
		"std::vector<int>::push_back": "std::vector<int>::push_back",
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}
