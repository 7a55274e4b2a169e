package pipeline

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/schema"
	"github.com/captrace/captrace/pkg/symbolize"
)

// A check with stacks reaches the sink with its raw stacks (named there,
// not here) and the summary names the code; a check without stays plain.
func TestStacksReachSinkAndSummary(t *testing.T) {
	kallsyms := filepath.Join(t.TempDir(), "kallsyms")
	os.WriteFile(kallsyms, []byte("ffffffff81000000 T cap_capable\nffffffff81000100 T security_capable\n"), 0o644)
	sym := symbolize.New(kallsyms, symbolize.Limits{}, nil)
	ring := newFakeRing()
	sink := &recordSink{}
	p := New(Options{Ring: ring, Advisor: advisor.NewTracker(advisor.Limits{}), Sink: sink, Symbols: sym,
		WallTime: func(k uint64) time.Time { return time.Unix(0, int64(k)) }, Log: quietLog()})
	go p.Run()
	t.Cleanup(ring.close)

	c := ctr(1)
	p.Traced(c)
	stacked := check(c, 23)
	stacked.Stacks = &bpf.RawStacks{Kernel: []uint64{0xffffffff81000010, 0xffffffff81000110}, User: []bpf.UserFrame{{IP: 0x1000}}}
	ring.emit(check(c, 21), stacked)
	p.Untraced(c)
	waitSummaries(t, sink, 1)

	sink.mu.Lock()
	evs := sink.events
	sink.mu.Unlock()
	if len(evs) != 2 || evs[0].Stacks != nil || evs[1].Stacks == nil {
		t.Fatalf("records: %d, stacks %v %v", len(evs), evs[0].Stacks, evs[1].Stacks)
	}
	if k, u := evs[1].Stacks.Text(); k != "security_capable+0x10" || !strings.HasPrefix(u, "[unknown] 0x1000") {
		t.Errorf("stacks named %q %q", k, u)
	}
	f, _ := sink.summaryOf(c.ID)
	if code, _ := f[schema.Code.Key].(string); code != "SYS_NICE ← unnamed code ([unknown] 0x1000 (process gone))" {
		t.Errorf("summary code %q", f[schema.Code.Key])
	}
	if st := p.Stats(); st.UserFramesUnresolved == 0 {
		t.Errorf("unresolved user frames not counted: %+v", st)
	}
}
