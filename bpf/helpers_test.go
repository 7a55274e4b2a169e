package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privtest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified on a hybrid one).
func cgroup2Mount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		if f := strings.Fields(post); len(f) > 0 && f[0] == "cgroup2" {
			if pf := strings.Fields(pre); len(pf) >= 5 {
				return pf[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

type testCgroup struct {
	path string
	id   uint64
	fd   int
}

var cgroupSeq atomic.Int32

// newCgroup makes a fresh cgroup v2 directory, removed when the test ends.
func newCgroup(t testing.TB) *testCgroup {
	t.Helper()
	root, err := cgroup2Mount()
	if err != nil {
		privtest.Lacks(t, err.Error())
	}
	path := filepath.Join(root, fmt.Sprintf("captrace-bpf-test-%d-%d", os.Getpid(), cgroupSeq.Add(1)))
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatalf("creating cgroup: %v", err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(path)
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	cg := &testCgroup{path: path, id: st.Ino, fd: fd}
	t.Cleanup(func() {
		unix.Close(fd)
		// The cgroup empties once its processes are reaped; retry briefly.
		for i := 0; i < 100; i++ {
			if err := os.Remove(path); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("cgroup %s not removed", path)
	})
	return cg
}

// child is a re-executed test binary placed in a cgroup with clone3 CgroupFD.
type child struct {
	t     testing.TB
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	pid   int
	tid   int
	uid   uint32
	gid   uint32
	comm  string
	ready bool
}

func startChild(t testing.TB, cg *testCgroup) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.fd}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting child in cgroup %s: %v", cg.path, err)
	}
	c := &child{t: t, cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
	t.Cleanup(c.stop)
	var comm string
	if _, err := fmt.Sscanf(c.do("id"), "%d %d %d %d %s", &c.pid, &c.tid, &c.uid, &c.gid, &comm); err != nil {
		t.Fatalf("child id: %v", err)
	}
	c.comm = comm
	return c
}

// do sends one command and returns the child's answer.
func (c *child) do(cmd string) string {
	c.t.Helper()
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		c.t.Fatalf("child %q: %v", cmd, err)
	}
	if !c.out.Scan() {
		c.t.Fatalf("child %q: no answer (%v)", cmd, c.out.Err())
	}
	return c.out.Text()
}

// stop ends the child (by its own PID only) and reaps it.
func (c *child) stop() {
	if c.cmd.ProcessState != nil {
		return
	}
	fmt.Fprintln(c.in, "exit")
	c.in.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// openTracer opens a tracer honouring CAPTRACE_TIER and CAPTRACE_EXPECT_TIER.
func openTracer(t testing.TB, opts Options) *Tracer {
	t.Helper()
	privtest.Root(t)
	// A test that forces a tier itself (the cross-check) is not about probing.
	forcedByTest := opts.ForceTier != ""
	if opts.ForceTier == "" {
		opts.ForceTier = Tier(os.Getenv("CAPTRACE_TIER"))
	}
	if opts.Log == nil {
		l := logrus.New()
		l.SetOutput(testWriter{t})
		opts.Log = l
	}
	tr, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	if want := os.Getenv("CAPTRACE_EXPECT_TIER"); want != "" && !forcedByTest && string(tr.Tier()) != want {
		t.Fatalf("tier %s chosen, CAPTRACE_EXPECT_TIER=%s", tr.Tier(), want)
	}
	return tr
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// collector reads every event in the background.
type collector struct {
	mu     sync.Mutex
	events []Event
	done   chan error
}

func collect(t testing.TB, tr *Tracer) *collector {
	c := &collector{done: make(chan error, 1)}
	go func() {
		for {
			var ev Event
			if err := tr.Read(&ev); err != nil {
				c.done <- err
				return
			}
			c.mu.Lock()
			c.events = append(c.events, ev)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { tr.Close() })
	return c
}

// settle waits until the reader has had time to drain what the kernel queued.
func settle() { time.Sleep(6 * readerPoll) }

// waitFor waits up to 5 s (slow emulated guests) until cgroupID has at
// least n events that match keep, then settles for stragglers.
func (c *collector) waitFor(cgroupID uint64, n int, keep func(Event) bool) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		got := 0
		for _, ev := range c.of(cgroupID) {
			if keep(ev) {
				got++
			}
		}
		if got >= n {
			break
		}
		time.Sleep(readerPoll)
	}
	settle()
}

// quiet waits until no new event of cgroupID has arrived for 10 polls (5 s at most).
func (c *collector) quiet(cgroupID uint64) {
	last, still := -1, 0
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && still < 10; {
		time.Sleep(readerPoll)
		if n := len(c.of(cgroupID)); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
}

// of returns the events of one cgroup collected so far.
func (c *collector) of(cgroupID uint64) []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Event
	for _, ev := range c.events {
		if ev.CgroupID == cgroupID {
			out = append(out, ev)
		}
	}
	return out
}

func commString(c [16]byte) string {
	s := string(c[:])
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return s
}

func describe(evs []Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "\n  %s capable=%v audit=%v syscall=%s pid=%d tid=%d comm=%s", ev.Cap, ev.Capable, ev.Audit, SyscallName(ev.Syscall), ev.Pid, ev.Tid, commString(ev.Comm))
		if ev.Runtime {
			b.WriteString(" runtime")
		}
	}
	return b.String()
}

// memoryAccounting tells the non-audited CAP_SYS_ADMIN probes of memory
// accounting (mmap, brk, execve, clone) apart from what a test provoked.
func memoryAccounting(ev Event) bool { return ev.Cap == capSysAdmin && !ev.Audit }

func boottimeNs() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}

// igGuideTargets makes the file the ig guide chowns and chmods and the
// directory it mounts a tmpfs on, removed when the test ends.
func igGuideTargets(t testing.TB) (file, mnt string) {
	t.Helper()
	dir := t.TempDir()
	file, mnt = dir+"/aaa", dir+"/mnt"
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return file, mnt
}
