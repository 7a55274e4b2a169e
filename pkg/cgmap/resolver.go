package cgmap

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
)

// host is the kernel and filesystem seen by a Resolver. The real one reads
// /proc and stats cgroupfs; tests give a table of files and inodes.
type host interface {
	// readFile returns the contents of a small file (/proc/self/mountinfo,
	// /proc/PID/cgroup).
	readFile(name string) ([]byte, error)
	// cgroupID returns the cgroup v2 ID of the directory: its inode number,
	// which is what bpf_get_current_cgroup_id() returns for its tasks.
	cgroupID(dir string) (uint64, error)
}

// Resolver finds the cgroup v2 ID of a container, from its PID or from its
// OCI Linux.CgroupsPath. Safe for concurrent use.
type Resolver struct {
	host host
	// mount is where the cgroup2 hierarchy is mounted: /sys/fs/cgroup on a
	// unified host, /sys/fs/cgroup/unified on a hybrid one.
	mount string
	// mountRoot is the cgroup the mount shows at its top: "/" unless the
	// mount is a bind of a sub-tree (some container setups).
	mountRoot string
	// nsPrefix is how captrace's cgroup namespace names the hierarchy's
	// root ("/../../.."), when captrace runs in a namespace of its own and
	// sees the host's hierarchy through a mount of its root; "" otherwise.
	nsPrefix string
	// self is the directory of captrace's own cgroup, "" if unknown.
	self string
}

// ErrNotContainerCgroup means a container's cgroup resolved to one that no
// container owns: the root of the hierarchy (every host process that is in
// no other cgroup) or captrace's own. Such a cgroup is never traced.
var ErrNotContainerCgroup = errors.New("not a container's cgroup")

// ErrNoCgroup2 means the host has no cgroup2 hierarchy mounted: a pure
// cgroup v1 host, where cgroup IDs cannot identify containers.
var ErrNoCgroup2 = errors.New("no cgroup2 hierarchy is mounted (cgroup v1 only host): captrace needs cgroup v2, unified or hybrid (systemd.unified_cgroup_hierarchy=1, or a cgroup2 mount at /sys/fs/cgroup/unified)")

func newResolver(h host) (*Resolver, error) {
	info, err := h.readFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("cgmap: find the cgroup2 mount: %w", err)
	}
	mount, root, ok := findCgroup2Mount(info)
	if !ok {
		return nil, ErrNoCgroup2
	}
	r := &Resolver{host: h, mount: mount, mountRoot: root}
	r.seeFromNamespace()
	// captrace's own cgroup is never a container's: tracing it would feed
	// captrace's checks back to itself. Unknown if it cannot be read.
	if data, err := h.readFile("/proc/self/cgroup"); err == nil {
		if cg, ok := unifiedCgroup(data); ok {
			if dir, err := r.dir(cg); err == nil {
				r.self = dir
			}
		}
	}
	return r, nil
}

// seeFromNamespace adapts the resolver to a cgroup namespace of its own: a
// pod on a cgroup v2 node (containerd gives every non-privileged container
// one) that mounts the node's /sys/fs/cgroup (the DaemonSet's hostPath). The
// kernel shows that mount's root, and the cgroups in other containers'
// /proc/PID/cgroup, relative to the namespace: "/../../..". When the mount is
// the hierarchy's root (which alone has no cgroup.type file), OCI cgroups
// paths join the mount as they are, and /proc paths lose that prefix.
func (r *Resolver) seeFromNamespace() {
	for _, seg := range strings.Split(strings.TrimPrefix(r.mountRoot, "/"), "/") {
		if seg != ".." {
			return
		}
	}
	if _, err := r.host.readFile(path.Join(r.mount, "cgroup.type")); err == nil {
		return // an ancestor of the namespace, but not the hierarchy's root
	}
	r.nsPrefix, r.mountRoot = r.mountRoot, "/"
}

// Mount returns the cgroup2 mount point in use.
func (r *Resolver) Mount() string { return r.mount }

// FromPID resolves the cgroup the process pid is in, from the "0::" line of
// /proc/PID/cgroup. It returns the ID and the directory it stat'ed (or the
// file it read, when it failed before that), for error messages.
func (r *Resolver) FromPID(pid uint32) (id uint64, dir string, err error) {
	if pid == 0 {
		return 0, "", errors.New("cgmap: no PID")
	}
	file := "/proc/" + strconv.FormatUint(uint64(pid), 10) + "/cgroup"
	data, err := r.host.readFile(file)
	if err != nil {
		return 0, file, fmt.Errorf("cgmap: read %s: %w", file, err)
	}
	cg, ok := unifiedCgroup(data)
	if !ok {
		return 0, file, fmt.Errorf("cgmap: %s has no cgroup v2 (0::) line", file)
	}
	dir, err = r.dir(cg)
	if err == nil {
		err = r.containerDir(dir)
	}
	if err != nil {
		return 0, file, fmt.Errorf("cgmap: process %d: %w", pid, err)
	}
	return r.stat(dir)
}

// containerDir refuses the cgroup directories no container owns.
func (r *Resolver) containerDir(dir string) error {
	switch {
	case dir == r.mount:
		return fmt.Errorf("cgroup %s is the top of the cgroup2 hierarchy: %w", dir, ErrNotContainerCgroup)
	case r.self != "" && dir == r.self:
		return fmt.Errorf("cgroup %s is captrace's own: %w", dir, ErrNotContainerCgroup)
	}
	return nil
}

// FromCgroupsPath resolves an OCI Linux.CgroupsPath, in cgroupfs form
// ("/kubepods/besteffort/pod<uid>/<id>") or systemd form
// ("kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>").
func (r *Resolver) FromCgroupsPath(cgroupsPath string) (id uint64, dir string, err error) {
	cg, err := CgroupsPathToCgroup(cgroupsPath)
	if err != nil {
		return 0, "", err
	}
	dir, err = r.dir(cg)
	if err == nil {
		err = r.containerDir(dir)
	}
	if err != nil {
		return 0, "", fmt.Errorf("cgmap: cgroups path %q: %w", cgroupsPath, err)
	}
	return r.stat(dir)
}

func (r *Resolver) stat(dir string) (uint64, string, error) {
	id, err := r.host.cgroupID(dir)
	if err != nil {
		return 0, dir, fmt.Errorf("cgmap: cgroup directory %s: %w", dir, err)
	}
	return id, dir, nil
}

// dir joins a cgroup (as /proc/PID/cgroup names it) to the mount point.
func (r *Resolver) dir(cg string) (string, error) {
	if strings.HasSuffix(cg, " (deleted)") {
		return "", fmt.Errorf("cgroup %s was deleted", strings.TrimSuffix(cg, " (deleted)"))
	}
	if r.nsPrefix != "" {
		if rel, ok := strings.CutPrefix(cg, r.nsPrefix); ok && (rel == "" || rel[0] == '/') {
			cg = path.Join("/", rel)
		}
	}
	if cg == "/.." || strings.HasPrefix(cg, "/../") {
		return "", fmt.Errorf("cgroup %s is outside captrace's cgroup namespace: run captrace in the host's cgroup namespace", cg)
	}
	if r.mountRoot != "/" {
		rel, ok := strings.CutPrefix(cg, r.mountRoot)
		if !ok || (rel != "" && rel[0] != '/') {
			return "", fmt.Errorf("cgroup %s is outside the cgroup2 mount %s (which shows %s)", cg, r.mount, r.mountRoot)
		}
		cg = rel
	}
	return path.Join(r.mount, cg), nil
}

// CgroupsPathToCgroup turns an OCI Linux.CgroupsPath into the cgroup it
// names, relative to the root of the cgroup2 hierarchy, the way runc's
// cgroupfs and systemd drivers do: "slice:prefix:name" is the systemd form,
// anything else a cgroupfs path.
func CgroupsPathToCgroup(cgroupsPath string) (string, error) {
	if cgroupsPath == "" {
		return "", errors.New("cgmap: empty cgroups path")
	}
	parts := strings.Split(cgroupsPath, ":")
	switch len(parts) {
	case 1:
		// runc cleans ".." away lexically; containerd never writes one, so
		// a path with one is refused rather than followed elsewhere.
		for _, elem := range strings.Split(cgroupsPath, "/") {
			if elem == ".." {
				return "", fmt.Errorf("cgmap: cgroups path %q contains \"..\"", cgroupsPath)
			}
		}
		cg := path.Join("/", cgroupsPath)
		if cg == "/" {
			return "", fmt.Errorf("cgmap: cgroups path %q names the root cgroup: %w", cgroupsPath, ErrNotContainerCgroup)
		}
		return cg, nil
	case 3:
		slice, prefix, name := parts[0], parts[1], parts[2]
		// The unit is prefix-name.scope inside the slice: a slash in
		// either would lead out of the slice.
		if strings.Contains(prefix, "/") {
			return "", fmt.Errorf("cgmap: cgroups path %q: the unit prefix %q contains a slash", cgroupsPath, prefix)
		}
		if slice == "" {
			// runc's systemd driver puts containers without a parent here.
			slice = "system.slice"
		}
		parent, err := ExpandSlice(slice)
		if err != nil {
			return "", fmt.Errorf("cgmap: cgroups path %q: %w", cgroupsPath, err)
		}
		if name == "" || strings.Contains(name, "/") {
			return "", fmt.Errorf("cgmap: cgroups path %q: bad unit name %q", cgroupsPath, name)
		}
		return path.Join(parent, systemdUnit(prefix, name)), nil
	default:
		return "", fmt.Errorf("cgmap: cgroups path %q is neither a cgroupfs path nor systemd's slice:prefix:name", cgroupsPath)
	}
}

// systemdUnit is the unit runc's systemd driver creates for a container.
func systemdUnit(prefix, name string) string {
	if strings.HasSuffix(name, ".slice") {
		return name
	}
	if prefix == "" {
		return name + ".scope"
	}
	return prefix + "-" + name + ".scope"
}

// ExpandSlice returns the cgroup of a systemd slice unit: every dash opens a
// nested slice, so "a-b-c.slice" lives at /a.slice/a-b.slice/a-b-c.slice and
// "-.slice" is the root. Like systemd, it refuses empty components ("a--b",
// leading or trailing dashes). Escaped dashes (\x2d) are part of a name.
func ExpandSlice(slice string) (string, error) {
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || name == "" {
		return "", fmt.Errorf("%q is not a systemd slice (NAME.slice)", slice)
	}
	if strings.Contains(name, "/") {
		return "", fmt.Errorf("slice %q contains a slash", slice)
	}
	if name == "-" {
		return "/", nil
	}
	var b strings.Builder
	for i := 0; ; {
		j := strings.IndexByte(name[i:], '-')
		if j == 0 || i+j == len(name)-1 {
			return "", fmt.Errorf("slice %q has an empty component (a leading, trailing or doubled dash)", slice)
		}
		end := len(name)
		if j > 0 {
			end = i + j
		}
		b.WriteByte('/')
		b.WriteString(name[:end])
		b.WriteString(".slice")
		if j < 0 {
			return b.String(), nil
		}
		i = end + 1
	}
}

// unifiedCgroup returns the cgroup of the "0::" line of a /proc/PID/cgroup.
func unifiedCgroup(data []byte) (string, bool) {
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if cg, ok := bytes.CutPrefix(line, []byte("0::")); ok {
			return string(cg), true
		}
	}
	return "", false
}

// ErrNoCgroup2Mount says the host mounts no cgroup2 hierarchy.
var ErrNoCgroup2Mount = errors.New("no cgroup2 hierarchy is mounted (captrace identifies containers by cgroup v2 ID)")

// FindCgroup2Mount returns where this process sees the cgroup2 hierarchy
// mounted, from /proc/self/mountinfo: the one place captrace, its tests and
// its e2e stack learn it.
func FindCgroup2Mount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	if mount, ok := Cgroup2Mount(data); ok {
		return mount, nil
	}
	return "", ErrNoCgroup2Mount
}

// Cgroup2Mount returns where the cgroup2 hierarchy is mounted according to
// a /proc/PID/mountinfo (/sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones).
func Cgroup2Mount(mountinfo []byte) (string, bool) {
	mount, _, ok := findCgroup2Mount(mountinfo)
	return mount, ok
}

// findCgroup2Mount returns the mount point and root of the cgroup2 hierarchy
// from a /proc/PID/mountinfo. With several cgroup2 mounts it prefers the one
// showing the whole hierarchy, then the conventional places.
func findCgroup2Mount(mountinfo []byte) (mount, root string, ok bool) {
	best := -1
	for _, line := range strings.Split(string(mountinfo), "\n") {
		// 41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
		pre, post, found := strings.Cut(line, " - ")
		if !found {
			continue
		}
		if fstype, _, _ := strings.Cut(post, " "); fstype != "cgroup2" {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 {
			continue
		}
		r, m := unescapeMountinfo(f[3]), unescapeMountinfo(f[4])
		score := 0
		if r == "/" {
			score += 2
		}
		if m == "/sys/fs/cgroup" || m == "/sys/fs/cgroup/unified" {
			score++
		}
		if score > best {
			best, mount, root = score, m, r
		}
	}
	return mount, root, best >= 0
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
