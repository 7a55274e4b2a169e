package output

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/schema"
	"github.com/captrace/captrace/pkg/symbolize"
)

// A stacked event: kstack/ustack (KERNEL_STACK/USER_STACK) after the other
// keys, frames joined by ';' and quoted as logfmt values; named once for
// every sink; an unresolved user frame printed, not dropped.
func TestStackFields(t *testing.T) {
	kallsyms := filepath.Join(t.TempDir(), "kallsyms")
	os.WriteFile(kallsyms, []byte("ffffffff81000000 T cap_capable\nffffffff81000100 T security_capable\nffffffff81000200 T capable\n"), 0o644)
	asked := 0
	sym := symbolize.New(kallsyms, symbolize.Limits{}, func(error) { asked++ })
	r := seedRecord(t)
	raw := &bpf.RawStacks{
		Kernel: []uint64{0xffffffff81000010, 0xffffffff81000110, 0xffffffff81000220},
		User:   []bpf.UserFrame{{IP: 0x7f0000001000}},
	}
	r.Stacks = NewStacks(sym, 0x7ffffff0, raw)
	line := formatLine(t, &r)
	wantK := `kstack="security_capable+0x10;capable+0x20"`
	wantU := `ustack="[unknown] 0x7f0000001000 (process gone)"`
	if !strings.Contains(line, " cgroup_id=4242 "+wantK+" "+wantU+"\n") {
		t.Errorf("logfmt line %q, want ... %s %s", line, wantK, wantU)
	}
	f := r.JournalFields()
	if f[schema.KernelStack.Journal] != "security_capable+0x10;capable+0x20" || f[schema.UserStack.Journal] != "[unknown] 0x7f0000001000 (process gone)" {
		t.Errorf("journal fields: %q %q", f[schema.KernelStack.Journal], f[schema.UserStack.Journal])
	}
	if asked != 0 {
		t.Errorf("kallsyms reported unreadable")
	}

	// No stacks asked: no stack fields at all.
	plain := seedRecord(t)
	plain.Stacks = NewStacks(sym, 1, nil)
	if line := formatLine(t, &plain); strings.Contains(line, "stack") {
		t.Errorf("plain event has stack fields: %q", line)
	}
	// A walk the kernel refused says so.
	r.Stacks = NewStacks(sym, 1, &bpf.RawStacks{Kernel: []uint64{0xffffffff81000010}, UserErr: 14})
	if f := r.JournalFields(); f[schema.UserStack.Journal] != "[no stack: errno 14]" {
		t.Errorf("refused user walk: %q", f[schema.UserStack.Journal])
	}
}
