package output

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/schema"
	"github.com/sirupsen/logrus"
)

// logrusLine is the reference: what logrus' TextFormatter, configured as
// every captrace logfmt line is, writes for r.
func logrusLine(t testing.TB, r *EnrichedEvent) string {
	t.Helper()
	logger := logrus.New()
	logger.Out = nil
	line, err := NewTextFormatter().Format(&logrus.Entry{
		Logger:  logger,
		Data:    r.LogFields(),
		Time:    r.Time.UTC(),
		Level:   logrus.InfoLevel,
		Message: schema.EventMessage,
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(line)
}

// hostileStrings are values a pod author controls (names) or a process
// chooses (comm), chosen to hit every branch of logrus' quoting.
var hostileStrings = []string{
	"", "plain", "with space", `quote"inside`, "new\nline", "tab\there", "back\\slash",
	"key=value", "ümlaut", "emoji😀", "\x1b[31mred", "\x00nul", "\xff\xfe", "a.b-c_d/e@f^g+h",
	"colon:x", "comma,x", "#hash", "\u2028sep", "  ", "=", `""`,
}

func TestAppendLogfmtMatchesLogrus(t *testing.T) {
	base := seedRecord(t)
	var cases []EnrichedEvent
	add := func(mod func(r *EnrichedEvent)) {
		r := base
		mod(&r)
		cases = append(cases, r)
	}
	add(func(*EnrichedEvent) {})
	for _, s := range hostileStrings {
		add(func(r *EnrichedEvent) { r.Container.Namespace = s })
		add(func(r *EnrichedEvent) { r.Container.Pod = s })
		add(func(r *EnrichedEvent) { r.Container.Name = s })
		add(func(r *EnrichedEvent) { r.Container.ID = s })
		add(func(r *EnrichedEvent) { r.Container.PodUID = s })
		add(func(r *EnrichedEvent) { r.Event.Comm = [16]byte{}; copy(r.Event.Comm[:], s) })
	}
	add(func(r *EnrichedEvent) { r.Event.Comm = [16]byte{'a', 0xff, 'b', 0x80} })
	add(func(r *EnrichedEvent) { copy(r.Event.Comm[:], "0123456789abcdef") }) // no NUL at all
	add(func(r *EnrichedEvent) { r.Container = base.Container; r.Container.Namespace = ""; r.Known = false })
	add(func(r *EnrichedEvent) { r.Event.Cap = 99 })
	add(func(r *EnrichedEvent) { r.Event.Syscall = -1 })
	add(func(r *EnrichedEvent) { r.Event.Syscall = 4000 })
	add(func(r *EnrichedEvent) { r.Event.Capable, r.Event.Audit = true, false })
	add(func(r *EnrichedEvent) { r.Event.InSetIDKnown, r.Event.InSetID = true, true })
	add(func(r *EnrichedEvent) { r.Event.InSetIDKnown, r.Event.InSetID = true, false })
	add(func(r *EnrichedEvent) {
		r.Event.Pid, r.Event.Tid, r.Event.Uid, r.Event.Gid = math.MaxUint32, 0, math.MaxUint32, 1
		r.Event.CgroupID = math.MaxUint64
	})
	add(func(r *EnrichedEvent) { r.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)) })
	add(func(r *EnrichedEvent) { r.Time = time.Date(2026, 1, 2, 3, 4, 5, 100, time.UTC) })
	add(func(r *EnrichedEvent) { r.Time = time.Time{} })

	// Random bytes in every string, with a fixed seed so a failure repeats.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		add(func(r *EnrichedEvent) {
			r.Container.Pod = randomString(rng)
			r.Container.Name = randomString(rng)
			r.Event.Comm = [16]byte{}
			copy(r.Event.Comm[:], randomString(rng))
		})
	}

	var buf, batch []byte
	var wantBatch string
	for i := range cases {
		r := &cases[i]
		buf = r.AppendLogfmt(buf[:0])
		want := logrusLine(t, r)
		if got := string(buf); got != want {
			t.Errorf("case %d:\n got %q\nwant %q", i, got, want)
		}
		// Appended after other lines, as a batch holds them.
		batch = r.AppendLogfmt(batch)
		wantBatch += want
	}
	if string(batch) != wantBatch {
		t.Errorf("lines appended one after another differ from logrus' lines")
	}
}

func randomString(rng *rand.Rand) string {
	b := make([]byte, rng.IntN(20))
	for i := range b {
		b[i] = byte(rng.IntN(256))
	}
	return string(b)
}

func TestAppendLogfmtAllocatesNothing(t *testing.T) {
	r := seedRecord(t)
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(1000, func() { buf = r.AppendLogfmt(buf[:0]) }); n != 0 {
		t.Errorf("AppendLogfmt: %.1f allocations per line, want 0", n)
	}
	var out bytes.Buffer
	s := NewLogfmt("stdout", &out)
	if n := testing.AllocsPerRun(1000, func() {
		if err := s.Write(&r); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Logfmt.Write: %.1f allocations per line, want 0", n)
	}
	_ = bpf.Event{}
}
