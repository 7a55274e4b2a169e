package output

import (
	"sync"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/symbolize"
)

// Stacks are the call stacks of one check: raw from the kernel, named once
// by the first sink writer that asks (never by the ring reader). Records
// share one *Stacks across sinks.
type Stacks struct {
	sym  *symbolize.Symbolizer
	pid  uint32
	raw  *bpf.RawStacks
	once sync.Once
	// kernel and user are the ';'-joined frames, "" when not captured.
	kernel, user string
}

// NewStacks wraps the raw stacks of an event of process pid; nil raw gives nil.
func NewStacks(sym *symbolize.Symbolizer, pid uint32, raw *bpf.RawStacks) *Stacks {
	if raw == nil || sym == nil {
		return nil
	}
	return &Stacks{sym: sym, pid: pid, raw: raw}
}

// Text returns the kernel and user stacks, innermost frame first, outermost
// last, joined by ';'. A stack not asked for is "".
func (s *Stacks) Text() (kernel, user string) {
	if s == nil {
		return "", ""
	}
	s.once.Do(func() {
		r := s.raw
		if len(r.Kernel) > 0 || r.KernelErr != 0 {
			s.kernel = s.sym.KernelStack(r.Kernel, r.KernelErr)
		}
		if len(r.User) > 0 || r.UserErr != 0 {
			frames := make([]symbolize.UserFrame, len(r.User))
			for i, f := range r.User {
				frames[i] = symbolize.UserFrame{HasBuildID: f.HasBuildID, BuildID: f.BuildID, Offset: f.Offset, IP: f.IP}
			}
			x := r.Exe
			exe := symbolize.Exe{Ino: x.Ino, DevMajor: x.DevMajor, DevMinor: x.DevMinor, StartCode: x.StartCode, EndCode: x.EndCode, Ppid: x.Ppid}
			s.user = s.sym.UserStack(s.pid, exe, frames, r.UserErr)
		}
	})
	return s.kernel, s.user
}
