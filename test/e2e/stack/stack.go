// Package stack runs a private containerd 2.4 + runc + NRI + standalone
// journald + captrace on one machine, for captrace's end-to-end test and its
// demo. Everything it starts lives under one directory below BaseDir, with its
// own sockets, cgroups and journal; Stop (or the next run, after a crash)
// removes all of it.
package stack

import (
	"context"
	"errors"
	"fmt"
	"github.com/captrace/captrace/internal/privilege"
	"github.com/captrace/captrace/pkg/cgmap"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// BaseDir holds one directory per stack. Short, because unix socket paths
// must fit in 108 bytes.
const BaseDir = "/tmp/captrace-e2e"

// Options configure New.
type Options struct {
	// Root is captrace's repository (ProjectRoot() when empty).
	Root string
	// NoCaptrace leaves the daemon out (to prove the rest of the stack alone).
	NoCaptrace bool
	// CaptraceBin is a prebuilt daemon; empty builds ./cmd/captrace.
	CaptraceBin string
	// Captrace are the daemon's config values beyond sockets and files.
	Captrace CaptraceConfig
	// NodeName is the daemon's NODE_NAME (the node its records name); empty:
	// the host name.
	NodeName string
	// Logf receives progress lines (t.Logf, or the demo's printer).
	Logf func(format string, args ...any)
	// Node, when set, runs containerd as a node does (see NodeContainerd);
	// otherwise containerd ContainerdVersion reads the stack's own config.
	Node *NodeContainerd
}

// Stack is one running private stack.
type Stack struct {
	ID    string
	Dir   string
	Tools Tools
	// CgroupParent is the cgroupfs parent under which every pod of this stack
	// runs (on each hierarchy); removing it removes runc's pod parents too.
	CgroupParent string
	// EventFile is captrace's logfmt output; JournalDir its private journal.
	EventFile  string
	JournalDir string
	// CaptraceEventFile, when set, is the output file as captrace sees it in
	// the stack's mount namespace (a file on a mount made there); EventFile
	// must then name the same file as the host sees it (InNamespacePath).
	CaptraceEventFile string

	opts       Options
	lock       *os.File
	holder     *proc // owns the private mount namespace journald and captrace run in
	journald   *proc
	containerd *proc
	captrace   *proc
	captraceOK bool
	// stderrToJournal: StartCaptrace connects the daemon's stderr to
	// journald's stream; captraceToJournal: the running daemon's stderr is.
	stderrToJournal, captraceToJournal bool
}

// StepError says which step of the stack failed, with the log tails a person
// needs to see why.
type StepError struct {
	Step  string
	Err   error
	Tails string
	Dir   string // the stack's directory (removed again by New on failure)
}

func (e *StepError) Error() string {
	return fmt.Sprintf("e2e stack step %q failed: %v\n%s", e.Step, e.Err, e.Tails)
}

func (e *StepError) Unwrap() error { return e.Err }

// Fail wraps err as a failure of step, with the tails of every log.
func (s *Stack) Fail(step string, err error) error {
	if err == nil {
		return nil
	}
	return &StepError{Step: step, Err: err, Tails: s.LogTails(25), Dir: s.Dir}
}

// LogTails returns the last n lines of containerd's, captrace's and
// journald's logs (and captrace's event file).
func (s *Stack) LogTails(n int) string {
	var b strings.Builder
	for _, name := range []string{"containerd", "captrace", "journald", "holder"} {
		path := filepath.Join(s.Dir, "logs", name+".log")
		if !allExist(path) {
			fmt.Fprintf(&b, "--- %s: not started\n", name)
			continue
		}
		fmt.Fprintf(&b, "--- %s log (%s), last %d lines:\n%s\n", name, path, n, tailFile(path, n))
	}
	if lines, err := s.CaptraceOperationalLines(); err == nil {
		fmt.Fprintf(&b, "--- captrace's stderr in the journal (journalctl -t captrace _TRANSPORT=stdout), last %d lines:\n%s\n", n,
			strings.Join(lines[max(0, len(lines)-n):], "\n"))
	}
	if !s.opts.NoCaptrace && allExist(s.EventFile) {
		fmt.Fprintf(&b, "--- captrace event file (%s), last %d lines:\n%s\n", s.EventFile, n, tailFile(s.EventFile, n))
	}
	return b.String()
}

func (s *Stack) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// New builds and starts a stack. On error, everything already started is torn
// down again and the error is a *StepError.
func New(ctx context.Context, opts Options) (*Stack, error) {
	if os.Geteuid() != 0 {
		return nil, &StepError{Step: "preflight", Err: errors.New("the e2e stack needs root")}
	}
	if opts.Root == "" {
		root, err := ProjectRoot()
		if err != nil {
			return nil, &StepError{Step: "preflight", Err: err}
		}
		opts.Root = root
	}
	if err := CleanupStale(opts.Logf); err != nil {
		return nil, &StepError{Step: "clean up stale stacks", Err: err}
	}
	id := fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
	s := &Stack{
		ID:           id,
		Dir:          filepath.Join(BaseDir, id),
		CgroupParent: "/captrace-e2e-" + id,
		opts:         opts,
	}
	s.EventFile = filepath.Join(s.Dir, "captrace-events.logfmt")
	// journald writes to /run/log/journal/<machine-id>; the stack binds <dir>/runlog on /run/log.
	s.JournalDir = filepath.Join(s.Dir, "runlog", "journal")
	if err := s.start(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Stack) start(ctx context.Context) error {
	// Lock first, then create the directory: CleanupStale in another run
	// never sees the directory of a live stack unlocked.
	if err := os.MkdirAll(BaseDir, 0o755); err != nil {
		return &StepError{Step: "create " + BaseDir, Err: err}
	}
	lock, err := os.OpenFile(lockPath(s.Dir), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return &StepError{Step: "lock " + s.Dir, Err: err}
	}
	// Held for the stack's life: CleanupStale skips directories it can't lock.
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return &StepError{Step: "lock " + s.Dir, Err: err}
	}
	for _, d := range []string{"logs", "runlog", "images", "pods", "bin", "nri/plugins", "nri/conf.d"} {
		if err := os.MkdirAll(filepath.Join(s.Dir, d), 0o755); err != nil {
			lock.Close()
			return &StepError{Step: "create " + s.Dir, Err: err}
		}
	}
	s.lock = lock

	t0 := time.Now()
	tools, err := EnsureTools(ctx, s.opts.Root, s.logf)
	if err != nil {
		return s.Fail("install containerd "+ContainerdVersion+" and crictl "+CrictlVersion, err)
	}
	if n := s.opts.Node; n != nil && n.Version != "" && n.Version != ContainerdVersion {
		if tools.Containerd, tools.Shim, tools.Ctr, err = EnsureContainerd(ctx, s.opts.Root, n.Version, s.logf); err != nil {
			return s.Fail("build containerd "+n.Version, err)
		}
	}
	s.Tools = tools
	s.logf("tools ready in %v", time.Since(t0).Round(time.Millisecond))

	if !s.opts.NoCaptrace && s.opts.CaptraceBin == "" {
		t0 = time.Now()
		s.opts.CaptraceBin = filepath.Join(s.Dir, "bin", "captrace")
		if err := BuildCaptrace(ctx, s.opts.Root, s.opts.CaptraceBin); err != nil {
			return s.Fail("build captrace", err)
		}
		s.logf("captrace built in %v", time.Since(t0).Round(time.Millisecond))
	}

	if err := s.startJournald(); err != nil {
		return s.Fail("start journald", err)
	}
	if err := s.StartContainerd(ctx); err != nil {
		return s.Fail("start containerd", err)
	}
	if err := s.importImages(ctx); err != nil {
		return s.Fail("import images", err)
	}
	if !s.opts.NoCaptrace {
		if err := s.StartCaptrace(ctx); err != nil {
			return s.Fail("start captrace", err)
		}
	}
	return nil
}

// run runs a short command and returns its stdout, or an error holding its output.
func run(ctx context.Context, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w\n%s%s", strings.Join(argv, " "), err, tail(stdout.String(), 10), tail(stderr.String(), 20))
	}
	return stdout.String(), nil
}

// waitFor polls cond every 50 ms until it holds, p exits, or timeout passes.
func waitFor(timeout time.Duration, p *proc, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited (%v) while waiting for %s", p.name, p.err, what)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---- journald ----

// startJournald starts a process holding a private mount namespace in which
// /run/systemd is a fresh tmpfs and /run/log is the stack's journal
// directory, then runs systemd-journald in it. The host's journald, if any,
// and /var/log/journal are untouched.
func (s *Stack) startJournald() error {
	conf := filepath.Join(s.Dir, "journald.conf")
	if err := os.WriteFile(conf, []byte(journaldConfig), 0o644); err != nil {
		return err
	}
	ready := filepath.Join(s.Dir, "namespace-ready")
	nodeMounts := ""
	if s.opts.Node != nil {
		if err := s.prepareNodeMounts(); err != nil {
			return err
		}
		nodeMounts = s.nodeMountScript()
	}
	script := fmt.Sprintf(`set -e
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mount --bind %q /run/log
mount --bind %q /etc/systemd/journald.conf
%stouch %q
exec sleep infinity`, filepath.Dir(s.JournalDir), conf, nodeMounts, ready)
	if _, err := os.Stat("/etc/systemd/journald.conf"); err != nil {
		return fmt.Errorf("/etc/systemd/journald.conf is the mount point of the private journald's config (Debian package systemd): %w", err)
	}
	// Mount points on the host; made (empty, and removed at teardown) where a
	// machine without systemd running lacks them.
	for _, d := range []string{"/run/systemd", "/run/log"} {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			if err := os.Mkdir(d, 0o755); err != nil {
				return fmt.Errorf("create mount point %s for the private journald: %w", d, err)
			}
			f, err := os.OpenFile(filepath.Join(s.Dir, "made-dirs"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				return err
			}
			fmt.Fprintln(f, d)
			f.Close()
		}
	}
	holder, err := s.spawn("holder", []string{s.Tools.Unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", script}, spawnOpts{})
	if err != nil {
		return err
	}
	s.holder = holder
	if err := waitFor(10*time.Second, holder, "the private mount namespace", func() bool { return allExist(ready) }); err != nil {
		return err
	}
	s.journald, err = s.spawn("journald", s.inNamespace(s.Tools.Journald), spawnOpts{})
	if err != nil {
		return err
	}
	sock := filepath.Join(fmt.Sprintf("/proc/%d/root", s.holder.pid()), "run/systemd/journal/socket")
	return waitFor(10*time.Second, s.journald, "journald's socket", func() bool { return allExist(sock) })
}

// Record appends line to the stack's file name, one of the lists teardown
// (also a later run's, after a crash) acts on: made-dirs (empty directories
// to remove), made-links (network interfaces to delete), sysctls ("path
// value" to write back).
func (s *Stack) Record(name, line string) error {
	f, err := os.OpenFile(filepath.Join(s.Dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, line)
	return err
}

// inNamespace prefixes argv so it runs in the stack's private mount namespace.
func (s *Stack) inNamespace(argv ...string) []string {
	return append([]string{s.Tools.Nsenter, fmt.Sprintf("--mount=/proc/%d/ns/mnt", s.holder.pid()), "--"}, argv...)
}

// HolderPID is the PID of the process holding the private mount namespace
// in which journald and captrace run.
func (s *Stack) HolderPID() int { return s.holder.pid() }

// JournalctlArgs returns the journalctl command line (from the host's shell)
// that reads the stack's private journal, followed by args.
func (s *Stack) JournalctlArgs(args ...string) []string {
	return append([]string{"journalctl", "-D", s.JournalDir, "--no-pager"}, args...)
}

// Journalctl runs journalctl on the stack's private journal with args.
func (s *Stack) Journalctl(ctx context.Context, args ...string) (string, error) {
	return run(ctx, s.JournalctlArgs(args...)...)
}

// ---- containerd ----

// ContainerdSocket is the stack's containerd gRPC address.
func (s *Stack) ContainerdSocket() string { return filepath.Join(s.Dir, "containerd.sock") }

// NRISocket is the stack's NRI socket, as the host sees it.
func (s *Stack) NRISocket() string {
	if s.opts.Node != nil {
		return filepath.Join(s.nodeMounts()[1][0], filepath.Base(NodeNRISocket))
	}
	return filepath.Join(s.Dir, "nri.sock")
}

// StartContainerd starts containerd (again, after StopContainerd) and waits
// until it serves CRI.
func (s *Stack) StartContainerd(ctx context.Context) error {
	argv := []string{s.Tools.Containerd, "--config", filepath.Join(s.Dir, "containerd.toml")}
	if s.opts.Node != nil {
		if err := s.writeNodeEtc(); err != nil {
			return err
		}
		argv = s.inNamespace(s.Tools.Containerd, "--config", NodeConfig)
	} else if err := os.WriteFile(argv[2], []byte(containerdConfig(s.Dir, s.Tools)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "crictl.yaml"), []byte(crictlConfig(s.ContainerdSocket())), 0o644); err != nil {
		return err
	}
	os.Remove(s.ContainerdSocket())
	// containerd finds containerd-shim-runc-v2 on PATH.
	path := "PATH=" + filepath.Dir(s.Tools.Shim) + ":" + os.Getenv("PATH")
	p, err := s.spawn("containerd", argv, spawnOpts{env: []string{path}})
	if err != nil {
		return err
	}
	s.containerd = p
	sockets := []string{s.ContainerdSocket(), s.NRISocket()}
	if s.opts.Node != nil && s.opts.Node.NRIOff {
		os.Remove(s.NRISocket()) // left by an earlier start with NRI on
		sockets = sockets[:1]
	}
	if err := waitFor(30*time.Second, p, "containerd's sockets "+strings.Join(sockets, ", "), func() bool { return allExist(sockets...) }); err != nil {
		return err
	}
	return waitFor(30*time.Second, p, "CRI to answer `crictl info`", func() bool {
		_, err := s.Crictl(ctx, "info")
		return err == nil
	})
}

// ContainerdPID is the running containerd's PID.
func (s *Stack) ContainerdPID() int { return s.containerd.pid() }

// StopContainerd stops containerd (SIGTERM); shims and pods keep running.
func (s *Stack) StopContainerd() {
	s.containerd.stop(15 * time.Second)
}

// RestartContainerd stops and starts containerd.
func (s *Stack) RestartContainerd(ctx context.Context) error {
	s.StopContainerd()
	return s.StartContainerd(ctx)
}

// Ctr runs ctr against the stack's containerd in the k8s.io namespace.
func (s *Stack) Ctr(ctx context.Context, args ...string) (string, error) {
	return run(ctx, append([]string{s.Tools.Ctr, "--address", s.ContainerdSocket(), "--namespace", "k8s.io"}, args...)...)
}

// Crictl runs crictl against the stack's containerd.
func (s *Stack) Crictl(ctx context.Context, args ...string) (string, error) {
	return run(ctx, append([]string{s.Tools.Crictl, "--config", filepath.Join(s.Dir, "crictl.yaml")}, args...)...)
}

func (s *Stack) importImages(ctx context.Context) error {
	layer, err := BusyboxLayer()
	if err != nil {
		return err
	}
	for _, img := range []struct {
		ref        string
		entrypoint []string
	}{
		{BusyboxImage, []string{"/bin/sh"}},
		// The sandbox's only process: sleeps until killed (CRI stops sandboxes with SIGKILL).
		{PauseImage, []string{"/bin/sleep", "2147483647"}},
	} {
		archive, err := OCIArchive(img.ref, layer, img.entrypoint)
		if err != nil {
			return err
		}
		path := filepath.Join(s.Dir, "images", strings.NewReplacer("/", "_", ":", "_").Replace(img.ref)+".tar")
		if err := os.WriteFile(path, archive, 0o644); err != nil {
			return err
		}
		if _, err := s.Ctr(ctx, "images", "import", "--platform", "linux/amd64", path); err != nil {
			return err
		}
	}
	out, err := s.Crictl(ctx, "images", "-q")
	if err != nil {
		return err
	}
	if n := len(strings.Fields(out)); n < 1 {
		return fmt.Errorf("CRI lists no image after import")
	}
	return nil
}

// ---- captrace ----

// CaptraceLog is the daemon's own (stderr) log, unless SetStderrToJournal
// sent it to the journal (CaptraceOperationalLines).
func (s *Stack) CaptraceLog() string { return filepath.Join(s.Dir, "logs", "captrace.log") }

// SetStderrToJournal makes the next StartCaptrace connect the daemon's
// stderr to the private journald's stdout stream, as systemd connects a
// unit's (JOURNAL_STREAM set, so lines carry their priority); false (the
// default) sends it to CaptraceLog. A journald restart ends such a stream.
func (s *Stack) SetStderrToJournal(on bool) { s.stderrToJournal = on }

// MetricsAddr is the daemon's metrics.listen: a Unix socket in the stack's directory.
func (s *Stack) MetricsAddr() string { return "unix:" + filepath.Join(s.Dir, "metrics.sock") }

// CaptraceConfig is the daemon's config beyond sockets and files; a change
// takes effect at the next StartCaptrace or RestartCaptrace.
func (s *Stack) CaptraceConfig() *CaptraceConfig { return &s.opts.Captrace }

// journalStream connects to the private journald's stdout stream as systemd
// connects a service's stderr: the stream header (identifier, no unit,
// priority info, level prefix on, no forwarding). It returns the socket and
// the JOURNAL_STREAM value ("DEVICE:INODE") that systemd sets.
func (s *Stack) journalStream(identifier string) (*os.File, string, error) {
	path := filepath.Join(fmt.Sprintf("/proc/%d/root", s.holder.pid()), "run/systemd/journal/stdout")
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, "", fmt.Errorf("connect to journald's stream socket: %w", err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "%s\n\n6\n1\n0\n0\n0\n", identifier); err != nil {
		return nil, "", err
	}
	f, err := conn.(*net.UnixConn).File()
	if err != nil {
		return nil, "", err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, "", err
	}
	return f, fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}

// CaptraceOperationalLines are the daemon's stderr lines in the private
// journal (start-up, NRI, stats), every run of it, oldest first.
func (s *Stack) CaptraceOperationalLines() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := run(ctx, s.JournalctlArgs("-t", "captrace", "_TRANSPORT=stdout", "-o", "cat")...)
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(out, "\n"), "\n"), nil
}

// countOperational counts the daemon's stderr lines in the journal that hold sub.
func (s *Stack) countOperational(sub string) int {
	lines, _ := s.CaptraceOperationalLines()
	n := 0
	for _, l := range lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// CaptraceConfigPath is the daemon's TOML file.
func (s *Stack) CaptraceConfigPath() string { return filepath.Join(s.Dir, "captrace.toml") }

// CaptracePID is the running daemon's PID, or 0.
func (s *Stack) CaptracePID() int {
	if s.captrace == nil || s.captrace.exited() {
		return 0
	}
	return s.captrace.pid()
}

// serviceCgroup is where journald looks for the unit name: a process in
// <cgroup2>/system.slice/captrace.service gets _SYSTEMD_UNIT=captrace.service.
func serviceCgroup() (string, error) {
	mnt, err := cgmap.FindCgroup2Mount()
	if err != nil {
		return "", err
	}
	return filepath.Join(mnt, "system.slice", "captrace.service"), nil
}

// StartCaptrace starts the daemon in the private mount namespace (so it
// reaches the private journald) and in system.slice/captrace.service, with
// its stderr on journald's stream as under systemd, and waits until
// containerd reports it connected and synchronized.
func (s *Stack) StartCaptrace(ctx context.Context) error { return s.startCaptrace(true) }

// StartCaptraceNoWait starts the daemon like StartCaptrace but returns at
// once (containerd may be down).
func (s *Stack) StartCaptraceNoWait() error { return s.startCaptrace(false) }

func (s *Stack) startCaptrace(wait bool) error {
	cfg := s.opts.Captrace
	cfg.MetricsListen = s.MetricsAddr()
	cfg.NRISocket = s.NRISocket()
	cfg.EventFile = s.EventFile
	if s.CaptraceEventFile != "" {
		cfg.EventFile = s.CaptraceEventFile
	}
	if err := os.WriteFile(s.CaptraceConfigPath(), []byte(cfg.render()), 0o644); err != nil {
		return err
	}
	cg, err := serviceCgroup()
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Dir(cg)); errors.Is(err, os.ErrNotExist) {
		// Remember that this stack made system.slice, so teardown may remove it.
		os.WriteFile(filepath.Join(s.Dir, "made-system-slice"), []byte(filepath.Dir(cg)), 0o644)
	}
	if err := os.MkdirAll(cg, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", cg, err)
	}
	cgfd, err := syscall.Open(cg, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", cg, err)
	}
	defer syscall.Close(cgfd)
	before := s.pluginSyncs()
	opts := spawnOpts{cgroupFD: cgfd}
	if s.stderrToJournal {
		stream, journalStream, err := s.journalStream("captrace")
		if err != nil {
			return err
		}
		defer stream.Close()
		opts.stderr, opts.env = stream, []string{"JOURNAL_STREAM=" + journalStream}
	}
	if s.opts.NodeName != "" {
		opts.env = append(opts.env, "NODE_NAME="+s.opts.NodeName)
	}
	p, err := s.spawn("captrace", s.inNamespace(s.ConfinedArgv(s.opts.CaptraceBin, "--config", s.CaptraceConfigPath())...), opts)
	if err != nil {
		return err
	}
	s.captrace, s.captraceToJournal = p, s.stderrToJournal
	if !wait {
		return nil
	}
	return waitFor(30*time.Second, p, "containerd to log captrace's NRI plugin \"connected and synchronized\"", func() bool { return s.pluginSyncs() > before })
}

// CaptraceBin is the daemon binary the stack runs.
func (s *Stack) CaptraceBin() string { return s.opts.CaptraceBin }

// ConfinedArgv prefixes argv so it runs as the captrace unit runs it: with
// exactly the capabilities of internal/privilege (bounding, permitted and
// effective; none inheritable or ambient) and no_new_privs, minus exclude.
// The whole e2e suite runs the daemon this way, which proves the set enough.
func (s *Stack) ConfinedArgv(argv ...string) []string {
	return ConfinedArgv(s.Tools.Setpriv, argv, nil)
}

// ConfinedArgv is Stack.ConfinedArgv with capabilities left out (to prove
// each is needed).
func ConfinedArgv(setpriv string, argv []string, exclude []string) []string {
	set := privilege.SetprivBoundingSet(exclude...)
	return append([]string{setpriv, "--bounding-set", set, "--inh-caps", "-all", "--ambient-caps", "-all", "--no-new-privs", "--"}, argv...)
}

// pluginSyncs counts containerd's log lines saying captrace's plugin synchronized.
func (s *Stack) pluginSyncs() int {
	data, _ := os.ReadFile(filepath.Join(s.Dir, "logs", "containerd.log"))
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, "captrace") && strings.Contains(line, "connected and synchronized") {
			n++
		}
	}
	return n
}

// WaitCaptraceResync waits until containerd has logged more than before
// synchronizations of captrace (after a containerd or captrace restart).
func (s *Stack) WaitCaptraceResync(before int, timeout time.Duration) error {
	return waitFor(timeout, s.captrace, "captrace to reconnect and synchronize", func() bool { return s.pluginSyncs() > before })
}

// PluginSyncs is the number of times containerd synchronized captrace so far.
func (s *Stack) PluginSyncs() int { return s.pluginSyncs() }

// StopCaptrace stops the daemon with SIGTERM (as systemd would); when its
// stderr is the journal, it waits until journald has stored its last line
// (msg=stopped).
func (s *Stack) StopCaptrace() {
	if s.captrace != nil && !s.captrace.exited() && s.captraceToJournal {
		stopped := s.countOperational("msg=stopped")
		s.captrace.stop(15 * time.Second)
		if err := waitFor(10*time.Second, nil, "journald to store captrace's last line (msg=stopped)", func() bool {
			return s.countOperational("msg=stopped") > stopped
		}); err != nil {
			s.logf("%v", err)
		}
	} else if s.captrace != nil {
		s.captrace.stop(15 * time.Second)
	}
}

// RestartCaptraceWith stops the daemon and starts it with its config
// changed by edit; the change lasts until the next RestartCaptraceWith.
func (s *Stack) RestartCaptraceWith(ctx context.Context, edit func(*CaptraceConfig)) error {
	s.StopCaptrace()
	edit(&s.opts.Captrace)
	return s.StartCaptrace(ctx)
}

// KillCaptrace kills the daemon with SIGKILL (no shutdown of any kind) and
// returns once it is reaped.
func (s *Stack) KillCaptrace() {
	if s.captrace != nil && !s.captrace.exited() {
		s.captrace.cmd.Process.Kill()
		<-s.captrace.done
	}
}

// StopJournald stops the stack's journald (SIGTERM); its socket file stays,
// so writers get "connection refused" as on a node whose journald died.
func (s *Stack) StopJournald() { s.journald.stop(5 * time.Second) }

// StartJournald starts journald again in the stack's namespace.
func (s *Stack) StartJournald() error {
	var err error
	s.journald, err = s.spawn("journald", s.inNamespace(s.Tools.Journald), spawnOpts{})
	return err
}

// InNamespace runs argv in the stack's private mount namespace (where
// journald and captrace run) and returns its combined output.
func (s *Stack) InNamespace(ctx context.Context, argv ...string) (string, error) {
	return run(ctx, s.inNamespace(argv...)...)
}

// InNamespacePath is path as the host sees it in the stack's mount
// namespace (through the holder's /proc/PID/root).
func (s *Stack) InNamespacePath(path string) string {
	return filepath.Join(fmt.Sprintf("/proc/%d/root", s.holder.pid()), path)
}

// RestartCaptrace stops and starts the daemon.
func (s *Stack) RestartCaptrace(ctx context.Context) error {
	s.StopCaptrace()
	return s.StartCaptrace(ctx)
}

// ---- teardown ----

// Stop removes every pod, stops every process, and removes mounts, cgroups,
// shim sockets and the stack's directory. It is safe to call more than once.
func (s *Stack) Stop() {
	if s.Dir == "" {
		return
	}
	if s.containerd != nil && !s.containerd.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := s.RemoveAllPods(ctx); err != nil {
			s.logf("teardown: %v", err)
		}
		cancel()
	}
	s.StopCaptrace()
	if s.containerd != nil {
		s.containerd.stop(15 * time.Second)
	}
	if s.journald != nil {
		s.journald.stop(5 * time.Second)
	}
	if s.holder != nil {
		s.holder.stop(5 * time.Second)
	}
	for _, problem := range teardownDir(s.Dir) {
		s.logf("teardown: %s", problem)
	}
	if s.lock != nil {
		os.Remove(lockPath(s.Dir))
		s.lock.Close()
		s.lock = nil
	}
	s.Dir = ""
}
