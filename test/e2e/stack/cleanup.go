package stack

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// shimSocketDir is where containerd-shim-runc-v2 always puts its sockets,
// whatever containerd's state directory.
const shimSocketDir = "/run/containerd/s"

// CleanupStale tears down every stack directory under BaseDir that no live run
// holds locked: what a crashed or killed run left behind.
func CleanupStale(logf func(string, ...any)) error {
	entries, err := os.ReadDir(BaseDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() {
			// A lock without its directory: a run that died between the two.
			if dir, ok := strings.CutSuffix(filepath.Join(BaseDir, e.Name()), ".lock"); ok {
				if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
					if lock, err := os.OpenFile(lockPath(dir), os.O_RDWR, 0); err == nil {
						if syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
							os.Remove(lockPath(dir))
						}
						lock.Close()
					}
				}
			}
			continue
		}
		dir := filepath.Join(BaseDir, e.Name())
		// The lock file exists before the directory (see start), so a
		// directory whose lock we can take belongs to no live run.
		lock, err := os.OpenFile(lockPath(dir), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return err
		}
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			lock.Close()
			continue // a live stack
		}
		if logf != nil {
			logf("removing stale stack %s", dir)
		}
		for _, problem := range teardownDir(dir) {
			if logf != nil {
				logf("stale stack %s: %s", dir, problem)
			}
		}
		os.Remove(lockPath(dir))
		lock.Close()
	}
	return nil
}

// lockPath is the file a live stack in dir holds an flock on.
func lockPath(dir string) string { return dir + ".lock" }

// teardownDir removes everything a stack in dir may have left: its
// processes, runc containers, shims and their sockets, mounts, cgroups and
// finally dir itself. It returns what it could not remove.
func teardownDir(dir string) []string {
	var problems []string
	id := filepath.Base(dir)

	// Recorded processes (containerd, captrace, journald, the namespace holder).
	killRecorded(dir)

	// Containers still known to runc: delete --force kills them and removes their cgroups.
	runcRoot := filepath.Join(dir, "runc", "k8s.io")
	if ents, err := os.ReadDir(runcRoot); err == nil {
		runc := "/usr/sbin/runc"
		if p, err := exec.LookPath("runc"); err == nil {
			runc = p
		}
		for _, e := range ents {
			if out, err := exec.Command(runc, "--root", runcRoot, "delete", "--force", e.Name()).CombinedOutput(); err != nil {
				problems = append(problems, fmt.Sprintf("runc delete --force %s: %v: %s", e.Name(), err, strings.TrimSpace(string(out))))
			}
		}
	}

	// Shims: each bundle records the shim's PID and socket address.
	bundles, _ := filepath.Glob(filepath.Join(dir, "state", "io.containerd.runtime.v2.task", "*", "*"))
	for _, b := range bundles {
		if data, err := os.ReadFile(filepath.Join(b, "shim.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
				if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), dir) {
					if start, err := procStartTime(pid); err == nil {
						killPID(pid, start)
					}
				}
			}
		}
		for _, sock := range shimSockets(b) {
			if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
				problems = append(problems, err.Error())
			}
		}
	}

	// Shims whose bundle is already gone but which still serve this stack's
	// containerd (a pod removed just before containerd stopped): found by the
	// unique -address argument, killed by PID.
	for _, pid := range processesWithArg("-address", filepath.Join(dir, "containerd.sock")) {
		if start, err := procStartTime(pid); err == nil {
			sockets := shimSocketsOf(pid)
			killPID(pid, start)
			for _, sock := range sockets {
				os.Remove(sock)
			}
		}
	}

	// Mounts below dir (rootfs overlays, sandbox shm), deepest first.
	for _, m := range mountsBelow(dir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			problems = append(problems, fmt.Sprintf("unmount %s: %v", m, err))
		}
	}

	// Cgroups: the stack's parent on every hierarchy, and the service cgroup if empty.
	for _, mnt := range cgroupMounts() {
		if err := removeCgroupTree(filepath.Join(mnt, "captrace-e2e-"+id)); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if cg, err := serviceCgroup(); err == nil {
		if procs, err := os.ReadFile(filepath.Join(cg, "cgroup.procs")); err == nil && len(strings.TrimSpace(string(procs))) == 0 {
			os.Remove(cg)
		}
		if made, err := os.ReadFile(filepath.Join(dir, "made-system-slice")); err == nil {
			os.Remove(string(made)) // fails, harmlessly, while another stack's service cgroup is in it
		}
	}

	// Host mount points the stack had to create (only where they were missing), deepest first.
	if made, err := os.ReadFile(filepath.Join(dir, "made-dirs")); err == nil {
		dirs := strings.Fields(string(made))
		sort.SliceStable(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			// Removing a directory that is a mount point in another
			// namespace (another live stack's bind) would detach that mount.
			if !mountPointElsewhere(d) {
				os.Remove(d) // fails, harmlessly, if something else uses it now
			}
		}
	}
	// Network interfaces made for the stack (a node's CNI bridge).
	if made, err := os.ReadFile(filepath.Join(dir, "made-links")); err == nil {
		for _, link := range strings.Fields(string(made)) {
			if _, err := os.Stat(filepath.Join("/sys/class/net", link)); err != nil {
				continue
			}
			if out, err := exec.Command("ip", "link", "del", link).CombinedOutput(); err != nil {
				problems = append(problems, fmt.Sprintf("ip link del %s: %v: %s", link, err, strings.TrimSpace(string(out))))
			}
		}
	}
	// Kernel settings the stack's node changed (CNI's bridge sets ip_forward), written back.
	if saved, err := os.ReadFile(filepath.Join(dir, "sysctls")); err == nil {
		lines := strings.Split(string(saved), "\n")
		for i := len(lines) - 1; i >= 0; i-- { // the first record, written last, holds the original
			path, value, ok := strings.Cut(lines[i], " ")
			if !ok || !strings.HasPrefix(path, "/proc/sys/") {
				continue
			}
			if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
				problems = append(problems, fmt.Sprintf("restore %s to %s: %v", path, value, err))
			}
		}
	}

	if err := os.RemoveAll(dir); err != nil {
		problems = append(problems, err.Error())
	}
	return problems
}

// processesWithArg returns the PIDs of processes whose command line holds
// flag immediately followed by value.
func processesWithArg(flag, value string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(data), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == flag && args[i+1] == value {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// shimSocketsOf returns the sockets a running shim serves, computed as
// containerd's shim.SocketAddress does: sha256 of <address>/<namespace>/<id>
// (and of .../debug) under /run/containerd/s.
func shimSocketsOf(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	args := strings.Split(string(data), "\x00")
	arg := func(flag string) string {
		for i := 0; i+1 < len(args); i++ {
			if args[i] == flag {
				return args[i+1]
			}
		}
		return ""
	}
	address, ns, id := arg("-address"), arg("-namespace"), arg("-id")
	if address == "" || ns == "" || id == "" {
		return nil
	}
	var socks []string
	for _, p := range []string{filepath.Join(address, ns, id), filepath.Join(address, ns, id, "debug")} {
		socks = append(socks, filepath.Join(shimSocketDir, fmt.Sprintf("%x", sha256.Sum256([]byte(p)))))
	}
	return socks
}

// shimSockets returns the sockets under /run/containerd/s named in a bundle's
// bootstrap.json (containerd 2.x) or address file.
func shimSockets(bundle string) []string {
	var addrs []string
	if data, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json")); err == nil {
		var b struct {
			Address string `json:"address"`
		}
		if json.Unmarshal(data, &b) == nil && b.Address != "" {
			addrs = append(addrs, b.Address)
		}
	}
	if data, err := os.ReadFile(filepath.Join(bundle, "address")); err == nil {
		addrs = append(addrs, strings.TrimSpace(string(data)))
	}
	var socks []string
	for _, a := range addrs {
		p := strings.TrimPrefix(strings.TrimPrefix(a, "unix://"), "ttrpc+unix://")
		if filepath.Dir(p) == shimSocketDir {
			socks = append(socks, p)
		}
	}
	return socks
}

// mountsBelow lists mount points at or below dir, deepest first.
func mountsBelow(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	return mounts
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupMounts lists the mount points of every cgroup hierarchy (v1 and v2).
func cgroupMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		fields, post := strings.Fields(line[:sep]), strings.Fields(line[sep+3:])
		if len(fields) >= 5 && len(post) >= 1 && (post[0] == "cgroup" || post[0] == "cgroup2") {
			mounts = append(mounts, unescapeMountinfo(fields[4]))
		}
	}
	return mounts
}

// removeCgroupTree removes root and every cgroup below it, deepest first,
// retrying while the last processes in them die.
func removeCgroupTree(root string) error {
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var lastErr error
	for attempt := 0; attempt < 50; attempt++ {
		var dirs []string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		lastErr = nil
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				lastErr = fmt.Errorf("rmdir cgroup %s: %w", d, err)
			}
		}
		if lastErr == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return lastErr
}

// Footprint is what a stack puts on the machine outside its directory,
// captured while it runs so that its removal can be checked afterwards.
type Footprint struct {
	Dir         string
	ShimSockets []string
	Processes   []RecordedProcess
	// MadeDirs, MadeLinks and Sysctls are what the stack recorded (Record)
	// that it made or changed on the host.
	MadeDirs, MadeLinks []string
	Sysctls             map[string]string // path → value to restore
}

// RecordedProcess is a process the stack started, named for good by PID and start time.
type RecordedProcess struct {
	Name  string
	PID   int
	Start uint64
}

// Footprint captures the stack's footprint now.
func (s *Stack) Footprint() Footprint {
	f := Footprint{Dir: s.Dir}
	for _, pid := range processesWithArg("-address", s.ContainerdSocket()) {
		for _, sock := range shimSocketsOf(pid) {
			if _, err := os.Lstat(sock); err == nil {
				f.ShimSockets = append(f.ShimSockets, sock)
			}
		}
	}
	data, _ := os.ReadFile(filepath.Join(s.Dir, "pids"))
	for _, line := range strings.Split(string(data), "\n") {
		var r RecordedProcess
		if n, _ := fmt.Sscanf(line, "%s %d %d", &r.Name, &r.PID, &r.Start); n == 3 {
			f.Processes = append(f.Processes, r)
		}
	}
	data, _ = os.ReadFile(filepath.Join(s.Dir, "made-dirs"))
	f.MadeDirs = strings.Fields(string(data))
	data, _ = os.ReadFile(filepath.Join(s.Dir, "made-links"))
	f.MadeLinks = strings.Fields(string(data))
	data, _ = os.ReadFile(filepath.Join(s.Dir, "sysctls"))
	for _, line := range strings.Split(string(data), "\n") {
		if path, value, ok := strings.Cut(line, " "); ok {
			if f.Sysctls == nil {
				f.Sysctls = map[string]string{}
			}
			if _, seen := f.Sysctls[path]; !seen { // the first record holds the original value
				f.Sysctls[path] = value
			}
		}
	}
	return f
}

// Leftovers lists what of the footprint is still on the machine: its
// recorded processes, any process naming its directory (shims, …), mounts
// below it, its cgroups (so no container process either), its shim sockets
// and the directory itself. Empty means clean.
func (f Footprint) Leftovers() []string {
	var left []string
	for _, r := range f.Processes {
		if start, err := procStartTime(r.PID); err == nil && start == r.Start {
			left = append(left, fmt.Sprintf("process %s (pid %d)", r.Name, r.PID))
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(data), f.Dir+"/") {
			left = append(left, fmt.Sprintf("process %s: %s", e.Name(), strings.ReplaceAll(strings.TrimRight(string(data), "\x00"), "\x00", " ")))
		}
	}
	for _, m := range mountsBelow(f.Dir) {
		left = append(left, "mount "+m)
	}
	for _, mnt := range cgroupMounts() {
		cg := filepath.Join(mnt, "captrace-e2e-"+filepath.Base(f.Dir))
		if _, err := os.Stat(cg); err == nil {
			left = append(left, "cgroup "+cg)
		}
	}
	for _, s := range f.ShimSockets {
		if _, err := os.Lstat(s); err == nil {
			left = append(left, "shim socket "+s)
		}
	}
	for _, d := range f.MadeDirs {
		if _, err := os.Stat(d); err == nil && !mountPointElsewhere(d) {
			left = append(left, "directory "+d+" (made by the stack)")
		}
	}
	for _, l := range f.MadeLinks {
		if _, err := os.Stat(filepath.Join("/sys/class/net", l)); err == nil {
			left = append(left, "network interface "+l)
		}
	}
	for path, want := range f.Sysctls {
		if got, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(got)) != want {
			left = append(left, fmt.Sprintf("%s is %s, was %s", path, strings.TrimSpace(string(got)), want))
		}
	}
	if _, err := os.Stat(f.Dir); err == nil {
		left = append(left, "directory "+f.Dir)
	}
	if _, err := os.Stat(lockPath(f.Dir)); err == nil {
		left = append(left, "lock file "+lockPath(f.Dir))
	}
	return left
}

// Abandon releases the stack's lock and forgets it without stopping
// anything, as a crash of the test process would: everything keeps running
// until CleanupStale (a later run) removes it. For tests of that cleanup.
func (s *Stack) Abandon() {
	if s.lock != nil {
		s.lock.Close()
		s.lock = nil
	}
	s.Dir = ""
}

// MakeCgroupParent creates the stack's cgroup parent on every hierarchy, for
// a kubelet whose cgroupRoot it is (the kubelet requires it to exist);
// teardown removes it with everything below.
func (s *Stack) MakeCgroupParent() error {
	for _, mnt := range cgroupMounts() {
		if err := os.MkdirAll(filepath.Join(mnt, s.CgroupParent), 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", filepath.Join(mnt, s.CgroupParent), err)
		}
	}
	return nil
}

// mountPointElsewhere reports whether path is a mount point in any mount
// namespace of a live process (read once per namespace from /proc/PID/mountinfo).
func mountPointElsewhere(path string) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	seen := map[string]bool{}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "mnt"))
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "mountinfo"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 5 && unescapeMountinfo(f[4]) == path {
				return true
			}
		}
	}
	return false
}
