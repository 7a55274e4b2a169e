// Package seedcheck plays the seed's demo (Inspektor Gadget's
// trace_capabilities guide) against the tracer on whatever kernel runs it:
// busybox applets as plain processes in a traced cgroup, no containerd. The
// kernel matrix runs it on every tier (fexit, kprobe in the 6.1/6.12 guests;
// tp_btf on the host under make test-unit).
package seedcheck

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/internal/privtest"
	"github.com/captrace/captrace/pkg/cgmap"
)

// Re-executed with helperEnv set, the test binary drops the capabilities
// named in it (comma-separated numbers) from its bounding set and execs its
// arguments: as root, the program then runs without them, like a container
// with those capabilities dropped.
const helperEnv = "SEEDCHECK_DROP_CAPS"

// The bounding set is per thread: drop and exec on the same one.
func init() {
	if _, ok := os.LookupEnv(helperEnv); ok {
		runtime.LockOSThread()
	}
}

func TestMain(m *testing.M) {
	if caps, ok := os.LookupEnv(helperEnv); ok {
		os.Exit(dropAndExec(caps, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func dropAndExec(caps string, argv []string) int {
	for _, c := range strings.Split(caps, ",") {
		n, err := strconv.Atoi(c)
		if err == nil {
			err = unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(n), 0, 0, 0)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "drop capability %q: %v\n", c, err)
			return 125
		}
	}
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, helperEnv+"=") {
			env = append(env, kv)
		}
	}
	err := syscall.Exec(argv[0], argv, env)
	fmt.Fprintf(os.Stderr, "exec %s: %v\n", argv[0], err)
	return 126
}

const busybox = "/bin/busybox"

// applets links each applet name to busybox in a temp dir, so that the kernel
// names the process after the applet (comm is the executed file's name), as
// in the seed's busybox image.
func applets(t *testing.T, names ...string) string {
	t.Helper()
	if _, err := os.Stat(busybox); err != nil {
		privtest.Lacks(t, "busybox-static (apt-get install busybox-static): "+err.Error())
	}
	dir := t.TempDir()
	for _, n := range names {
		if err := os.Symlink(busybox, filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func cgroup2Mount(t *testing.T) string {
	t.Helper()
	mount, err := cgmap.FindCgroup2Mount()
	if err != nil {
		privtest.Lacks(t, "a cgroup2 mount: "+err.Error())
	}
	return mount
}

type cgroup struct {
	path string
	id   uint64
	fd   int
}

// newCgroup makes an empty cgroup2 directory, removed at the end of the test.
func newCgroup(t *testing.T) cgroup {
	t.Helper()
	path := filepath.Join(cgroup2Mount(t), fmt.Sprintf("captrace-seedcheck-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-")))
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	fd, err := unix.Open(path, unix.O_DIRECTORY|unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(path)
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		for i := 0; i < 100; i++ { // empties once its processes are reaped
			if err := os.Remove(path); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("cgroup %s not removed", path)
	})
	return cgroup{path: path, id: st.Ino, fd: fd}
}

// run starts argv in cg (clone3 CLONE_INTO_CGROUP) as root without the
// capabilities in drop, waits for it, and returns its PID and exit error.
func run(t *testing.T, cg cgroup, drop []int, argv ...string) (int, error) {
	return runIn(t, cg, drop, 0, argv...)
}

// runIn is run with unshare flags applied before exec, so their own checks
// carry the test binary's comm, not the applet's.
func runIn(t *testing.T, cg cgroup, drop []int, unshare uintptr, argv ...string) (int, error) {
	t.Helper()
	var cmd *exec.Cmd
	if drop != nil {
		var caps []string
		for _, c := range drop {
			caps = append(caps, strconv.Itoa(c))
		}
		cmd = exec.Command(os.Args[0], argv...)
		cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(caps, ","))
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.fd, Unshareflags: unshare}
	out, err := cmd.CombinedOutput()
	pid := 0
	if cmd.Process != nil {
		pid = cmd.Process.Pid
	}
	t.Logf("%s (pid %d): %v %s", strings.Join(argv, " "), pid, err, strings.TrimSpace(string(out)))
	return pid, err
}

// openTracer opens the tracer honouring CAPTRACE_TIER (force) and
// CAPTRACE_EXPECT_TIER (assert what probing chose), like ./bpf's tests.
func openTracer(t *testing.T) *bpf.Tracer {
	t.Helper()
	privtest.Root(t)
	log := logrus.New()
	log.SetOutput(testLog{t})
	tr, err := bpf.Open(bpf.Options{ForceTier: bpf.Tier(os.Getenv("CAPTRACE_TIER")), Log: log})
	if err != nil {
		t.Fatalf("open tracer: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	if want := os.Getenv("CAPTRACE_EXPECT_TIER"); want != "" && string(tr.Tier()) != want {
		t.Fatalf("probing chose tier %s, CAPTRACE_EXPECT_TIER=%s", tr.Tier(), want)
	}
	return tr
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// events reads the tracer in the background.
type events struct {
	mu  sync.Mutex
	all []bpf.Event
}

func collect(t *testing.T, tr *bpf.Tracer) *events {
	e := &events{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			var ev bpf.Event
			if err := tr.Read(&ev); err != nil {
				return
			}
			e.mu.Lock()
			e.all = append(e.all, ev)
			e.mu.Unlock()
		}
	}()
	t.Cleanup(func() { tr.Close(); <-done })
	return e
}

// waitFor polls until ok holds for the events of cgroupID or the deadline
// passes (software-emulated guests are slow), and returns them.
func (e *events) waitFor(cgroupID uint64, ok func([]bpf.Event) bool) []bpf.Event {
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.mu.Lock()
		var evs []bpf.Event
		for _, ev := range e.all {
			if ev.CgroupID == cgroupID {
				evs = append(evs, ev)
			}
		}
		e.mu.Unlock()
		if ok(evs) || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func comm(ev bpf.Event) string {
	c := string(ev.Comm[:])
	if i := strings.IndexByte(c, 0); i >= 0 {
		c = c[:i]
	}
	return c
}

func describe(evs []bpf.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "\n  %-8s pid=%d tid=%d uid=%d gid=%d capable=%v audit=%v %s %s",
			comm(ev), ev.Pid, ev.Tid, ev.Uid, ev.Gid, ev.Capable, ev.Audit, ev.Cap, bpf.SyscallName(ev.Syscall))
	}
	return b.String()
}

const capSysNice = 23

// TestSetPriorityDemo is the seed's kubectl guide: renice to -20 in a
// container without CAP_SYS_NICE shows CAP_SYS_NICE capable=false audit=1 in
// SYS_SETPRIORITY; with the capability added, capable=true.
func TestSetPriorityDemo(t *testing.T) {
	tr := openTracer(t)
	evs := collect(t, tr)
	bin := applets(t, "renice")
	cg := newCgroup(t)
	if err := tr.Trace(cg.id, bpf.Settings{}); err != nil {
		t.Fatal(err)
	}

	// busybox 1.35 has no nice applet; renice -p 0 makes the same setpriority call.
	without, err := run(t, cg, []int{capSysNice}, filepath.Join(bin, "renice"), "-n", "-20", "-p", "0")
	if err == nil {
		t.Fatalf("renice -20 without CAP_SYS_NICE succeeded")
	}
	with, err := run(t, cg, nil, filepath.Join(bin, "renice"), "-n", "-20", "-p", "0")
	if err != nil {
		t.Fatalf("renice -20 as root: %v", err)
	}

	nice := func(all []bpf.Event) []bpf.Event {
		var out []bpf.Event
		for _, ev := range all {
			if ev.Cap == capSysNice {
				out = append(out, ev)
			}
		}
		return out
	}
	got := nice(evs.waitFor(cg.id, func(all []bpf.Event) bool { return len(nice(all)) >= 2 }))
	if len(got) != 2 {
		t.Fatalf("want one CAP_SYS_NICE check per renice, got%s", describe(got))
	}
	for i, want := range []struct {
		pid     int
		capable bool
	}{{without, false}, {with, true}} {
		ev := got[i]
		if comm(ev) != "renice" || int(ev.Pid) != want.pid || int(ev.Tid) != want.pid || ev.Uid != 0 || ev.Gid != 0 ||
			ev.Capable != want.capable || !ev.Audit || ev.Cap.String() != "CAP_SYS_NICE" || bpf.SyscallName(ev.Syscall) != "SYS_SETPRIORITY" {
			t.Errorf("event %d:%s\nwant renice pid=%d uid=0 capable=%v audit=true CAP_SYS_NICE SYS_SETPRIORITY",
				i, describe([]bpf.Event{ev}), want.pid, want.capable)
		}
	}
}

// TestIGGuideAuditedPairs is the seed's ig guide in a privileged busybox
// container, as plain root processes: each applet makes the guide's audited
// checks, by capability and syscall, and no other audited check.
func TestIGGuideAuditedPairs(t *testing.T) {
	tr := openTracer(t)
	evs := collect(t, tr)
	bin := applets(t, "touch", "chown", "chmod", "chroot", "true", "mount", "unshare", "nsenter")
	cg := newCgroup(t)
	if err := tr.Trace(cg.id, bpf.Settings{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file, mnt := filepath.Join(dir, "aaa"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		unshare uintptr
		argv    []string
	}{
		{0, []string{"touch", file}},
		{0, []string{"chown", "1:1", file}},
		{0, []string{"chmod", "400", file}},
		{0, []string{"chroot", "/", filepath.Join(bin, "true")}},
		// In a private mount namespace of its own (Go makes / private): the
		// tmpfs goes away with the process.
		{syscall.CLONE_NEWNS, []string{"mount", "-t", "tmpfs", "tmpfs", mnt}},
		// The guide's `unshare -i sh -c "nsenter -i -t $PPID echo OK"`, without the shell.
		{0, []string{"unshare", "-i", filepath.Join(bin, "nsenter"), "-i", "-t", strconv.Itoa(os.Getpid()), filepath.Join(bin, "true")}},
	}
	for _, s := range steps {
		if _, err := runIn(t, cg, nil, s.unshare, append([]string{filepath.Join(bin, s.argv[0])}, s.argv[1:]...)...); err != nil {
			t.Fatalf("%s: %v", strings.Join(s.argv, " "), err)
		}
	}

	// comm → "CAP SYSCALL" → how many audited, allowed checks it makes.
	// chmod asks CAP_FSETID in setattr_prepare and again in setattr_copy; in
	// the guide's container the second runs under overlayfs's mounter
	// credentials, so its table shows one. setns asks CAP_SYS_ADMIN in the
	// target's and in the caller's user namespace.
	// arm64 has only the *at forms of chown and chmod.
	chown, chmod := "SYS_CHOWN", "SYS_CHMOD"
	if runtime.GOARCH == "arm64" {
		chown, chmod = "SYS_FCHOWNAT", "SYS_FCHMODAT"
	}
	want := map[string]map[string]int{
		"chown":   {"CAP_CHOWN " + chown: 2},
		"chmod":   {"CAP_FOWNER " + chmod: 1, "CAP_FSETID " + chmod: 2},
		"chroot":  {"CAP_SYS_CHROOT SYS_CHROOT": 1},
		"mount":   {"CAP_SYS_ADMIN SYS_MOUNT": 2},
		"unshare": {"CAP_SYS_ADMIN SYS_UNSHARE": 1},
		"nsenter": {"CAP_SYS_ADMIN SYS_SETNS": 2},
	}
	tally := func(all []bpf.Event) map[string]map[string]int {
		got := map[string]map[string]int{}
		for _, ev := range all {
			if _, ok := want[comm(ev)]; !ok || !ev.Audit || !ev.Capable {
				continue
			}
			if got[comm(ev)] == nil {
				got[comm(ev)] = map[string]int{}
			}
			got[comm(ev)][ev.Cap.String()+" "+bpf.SyscallName(ev.Syscall)]++
		}
		return got
	}
	all := evs.waitFor(cg.id, func(all []bpf.Event) bool { return fmt.Sprint(tally(all)) == fmt.Sprint(want) })
	got := tally(all)
	var diffs []string
	for _, c := range sortedKeys(want) {
		if fmt.Sprint(got[c]) != fmt.Sprint(want[c]) {
			diffs = append(diffs, fmt.Sprintf("%s: got %v, want %v", c, got[c], want[c]))
		}
	}
	if len(diffs) > 0 {
		t.Fatalf("audited checks differ from the guide (tier %s):\n  %s\nall events:%s", tr.Tier(), strings.Join(diffs, "\n  "), describe(all))
	}
	t.Logf("tier %s: audited checks per applet: %v", tr.Tier(), got)
}

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
