package stack

import (
	"bufio"
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
			continue
		}
		dir := filepath.Join(BaseDir, e.Name())
		lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
		if err == nil {
			if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
				lock.Close()
				continue // a live stack
			}
		}
		if logf != nil {
			logf("removing stale stack %s", dir)
		}
		for _, problem := range teardownDir(dir) {
			if logf != nil {
				logf("stale stack %s: %s", dir, problem)
			}
		}
		if lock != nil {
			lock.Close()
		}
	}
	return nil
}

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

	if err := os.RemoveAll(dir); err != nil {
		problems = append(problems, err.Error())
	}
	return problems
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

// cgroup2Mount returns the mount point of the unified hierarchy.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		fields, post := strings.Fields(line[:sep]), strings.Fields(line[sep+3:])
		if len(fields) >= 5 && len(post) >= 1 && post[0] == "cgroup2" {
			return unescapeMountinfo(fields[4]), nil
		}
	}
	return "", errors.New("no cgroup2 hierarchy is mounted (captrace identifies containers by cgroup v2 ID)")
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
