package symbolize

import (
	"fmt"
	"strings"
	"sync"
)

// Separator joins frames in the kstack and ustack fields, innermost first
// and outermost last.
const Separator = ";"

// Symbolizer names kernel and user frames. It reads /proc/kallsyms the first
// time a kernel stack needs it (in a sink writer, not at start-up and not in
// the ring reader); when that fails, kernel frames print as addresses.
type Symbolizer struct {
	kallsyms   string
	kernelOnce sync.Once
	kernel     *Kernel
	kernelErr  error
	onError    func(error)
	User       *User
}

// New returns a symbolizer reading kallsyms (normally /proc/kallsyms) when
// first needed, with user caches bounded by lim. onError, if set, hears once
// why the kernel's symbols could not be read.
func New(kallsyms string, lim Limits, onError func(error)) *Symbolizer {
	return &Symbolizer{kallsyms: kallsyms, User: NewUser(lim), onError: onError}
}

func (s *Symbolizer) kernelSyms() *Kernel {
	s.kernelOnce.Do(func() {
		s.kernel, s.kernelErr = NewKernel(s.kallsyms)
		if s.kernelErr != nil && s.onError != nil {
			s.onError(s.kernelErr)
		}
	})
	return s.kernel
}

// KernelStack returns the kernel frames joined by Separator, or why the
// kernel gave none (errno > 0).
func (s *Symbolizer) KernelStack(addrs []uint64, errno int32) string {
	if errno != 0 {
		return fmt.Sprintf("[no stack: errno %d]", errno)
	}
	k := s.kernelSyms()
	if k == nil {
		frames := make([]string, len(addrs))
		for i, a := range addrs {
			frames[i] = fmt.Sprintf("[unknown] 0x%x (kernel)", a)
		}
		return strings.Join(frames, Separator)
	}
	return strings.Join(k.Stack(addrs), Separator)
}

// UserStack returns the user frames of pid joined by Separator, or why the
// kernel gave none.
func (s *Symbolizer) UserStack(pid uint32, exe Exe, frames []UserFrame, errno int32) string {
	if errno != 0 {
		return fmt.Sprintf("[no stack: errno %d]", errno)
	}
	return strings.Join(s.User.Stack(pid, exe, frames), Separator)
}
