package cgmap

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
)

// Mountinfo of this project's hybrid VM: v1 controllers plus cgroup2 at
// /sys/fs/cgroup/unified.
const hybridMountinfo = `22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

// Mountinfo of a systemd host with the unified hierarchy only.
const unifiedMountinfo = `24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
28 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`

// Mountinfo of a cgroup v1 only host.
const legacyMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
`

// A container that sees a bind of its own sub-tree first, then the whole
// hierarchy at a path with a space in it.
const bindMountinfo = `50 40 0:26 /kubepods/pod1 /sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw
51 40 0:26 / /host\040cgroup rw,relatime - cgroup2 cgroup2 rw
`

const hybridProcCgroup = `9:name=systemd:/
4:memory:/kubepods/besteffort/podabc/ctr1
0::/kubepods/besteffort/podabc/ctr1
`

// fakeHost is a table of files and directory inodes.
type fakeHost struct {
	files map[string]string
	dirs  map[string]uint64
}

func (h fakeHost) readFile(name string) ([]byte, error) {
	if s, ok := h.files[name]; ok {
		return []byte(s), nil
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

func (h fakeHost) cgroupID(dir string) (uint64, error) {
	if id, ok := h.dirs[dir]; ok {
		return id, nil
	}
	return 0, &fs.PathError{Op: "stat", Path: dir, Err: fs.ErrNotExist}
}

func TestFindCgroup2Mount(t *testing.T) {
	for _, tc := range []struct {
		name, mountinfo, mount, root string
		ok                           bool
	}{
		{"hybrid", hybridMountinfo, "/sys/fs/cgroup/unified", "/", true},
		{"unified", unifiedMountinfo, "/sys/fs/cgroup", "/", true},
		{"legacy", legacyMountinfo, "", "", false},
		{"whole hierarchy preferred over a bind of a sub-tree", bindMountinfo, "/host cgroup", "/", true},
		{"only a bind of a sub-tree", strings.SplitAfter(bindMountinfo, "\n")[0], "/sys/fs/cgroup", "/kubepods/pod1", true},
		{"empty", "", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mount, root, ok := findCgroup2Mount([]byte(tc.mountinfo))
			if mount != tc.mount || root != tc.root || ok != tc.ok {
				t.Errorf("got (%q, %q, %v), want (%q, %q, %v)", mount, root, ok, tc.mount, tc.root, tc.ok)
			}
		})
	}
}

func TestNewResolverLegacyHost(t *testing.T) {
	_, err := newResolver(fakeHost{files: map[string]string{"/proc/self/mountinfo": legacyMountinfo}})
	if !errors.Is(err, ErrNoCgroup2) {
		t.Fatalf("got %v, want ErrNoCgroup2", err)
	}
}

func TestExpandSlice(t *testing.T) {
	for _, tc := range []struct {
		slice, want, err string
	}{
		{"-.slice", "/", ""},
		{"system.slice", "/system.slice", ""},
		{"kubepods.slice", "/kubepods.slice", ""},
		{"kubepods-besteffort.slice", "/kubepods.slice/kubepods-besteffort.slice", ""},
		{"kubepods-besteffort-pod0b2d_9a1e.slice", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b2d_9a1e.slice", ""},
		{"a-b-c-d.slice", "/a.slice/a-b.slice/a-b-c.slice/a-b-c-d.slice", ""},
		// An escaped dash is part of the name, as in systemd.
		{`my\x2dapp-x.slice`, `/my\x2dapp.slice/my\x2dapp-x.slice`, ""},
		{"a--b.slice", "", "empty component"},
		{"-a.slice", "", "empty component"},
		{"a-.slice", "", "empty component"},
		{".slice", "", "not a systemd slice"},
		{"kubepods", "", "not a systemd slice"},
		{"kubepods.scope", "", "not a systemd slice"},
		{"a/b.slice", "", "slash"},
	} {
		got, err := ExpandSlice(tc.slice)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ExpandSlice(%q) = %q, %v; want error containing %q", tc.slice, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ExpandSlice(%q) = %q, %v; want %q", tc.slice, got, err, tc.want)
		}
	}
}

func TestCgroupsPathToCgroup(t *testing.T) {
	const uid = "pod0b2d_9a1e"
	for _, tc := range []struct {
		name, path, want, err string
	}{
		{"cgroupfs", "/kubepods/besteffort/pod0b2d-9a1e/abc123", "/kubepods/besteffort/pod0b2d-9a1e/abc123", ""},
		{"cgroupfs guaranteed", "/kubepods/pod0b2d-9a1e/abc123", "/kubepods/pod0b2d-9a1e/abc123", ""},
		{"cgroupfs unclean", "/kubepods//besteffort/./x/", "/kubepods/besteffort/x", ""},
		{"cgroupfs relative", "kubepods/x", "/kubepods/x", ""},
		{"systemd besteffort", "kubepods-besteffort-" + uid + ".slice:cri-containerd:abc123",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-" + uid + ".slice/cri-containerd-abc123.scope", ""},
		{"systemd guaranteed", "kubepods-" + uid + ".slice:cri-containerd:abc123",
			"/kubepods.slice/kubepods-" + uid + ".slice/cri-containerd-abc123.scope", ""},
		{"systemd nested dashes", "a-b-c-d.slice:docker:x",
			"/a.slice/a-b.slice/a-b-c.slice/a-b-c-d.slice/docker-x.scope", ""},
		{"systemd no prefix", "machine.slice::x", "/machine.slice/x.scope", ""},
		{"systemd unit is a slice", "kubepods.slice:cri-containerd:extra.slice", "/kubepods.slice/extra.slice", ""},
		{"systemd default parent", ":cri-containerd:x", "/system.slice/cri-containerd-x.scope", ""},
		{"systemd bad slice", "kubepods--x.slice:cri-containerd:x", "", "empty component"},
		{"systemd not a slice", "kubepods:cri-containerd:x", "", "not a systemd slice"},
		{"systemd empty name", "kubepods.slice:cri-containerd:", "", "bad unit name"},
		{"two colons", "a:b", "", "neither"},
		// A prefix with a slash led out of the slice to any cgroup.
		{"systemd prefix with a slash", "a.slice:../../../system.slice/kubelet:x", "", "prefix"},
		{"systemd prefix with one slash", "a.slice:x/y:z", "", "prefix"},
		{"cgroupfs root", "/", "", "root cgroup"},
		{"cgroupfs root unclean", "//./", "", "root cgroup"},
		{"cgroupfs dot-dot", "/kubepods/../system.slice/kubelet.service", "", `".."`},
		{"cgroupfs dot-dot to root", "/kubepods/..", "", `".."`},
		{"empty", "", "", "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CgroupsPathToCgroup(tc.path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %q, %v; want error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestResolver(t *testing.T) {
	files := map[string]string{
		"/proc/42/cgroup":   hybridProcCgroup,
		"/proc/43/cgroup":   "0::/kubepods/gone (deleted)\n",
		"/proc/44/cgroup":   "4:memory:/x\n",
		"/proc/45/cgroup":   "0::/../../elsewhere\n",
		"/proc/46/cgroup":   "0::/kubepods/pod1/ctr9\n",
		"/proc/47/cgroup":   "0::/system.slice/other\n",
		"/proc/48/cgroup":   "0::/\n",
		"/proc/49/cgroup":   "0::/system.slice/captrace.service\n",
		"/proc/self/cgroup": "0::/system.slice/captrace.service\n",
		"/proc/self/dummy":  "",
	}
	for _, tc := range []struct {
		name      string
		mountinfo string
		dirs      map[string]uint64
		pid       uint32
		path      string // cgroups path, when pid is 0
		wantID    uint64
		wantDir   string
		err       string
	}{
		{name: "pid hybrid", mountinfo: hybridMountinfo, pid: 42,
			dirs:   map[string]uint64{"/sys/fs/cgroup/unified/kubepods/besteffort/podabc/ctr1": 7001},
			wantID: 7001, wantDir: "/sys/fs/cgroup/unified/kubepods/besteffort/podabc/ctr1"},
		{name: "pid unified", mountinfo: unifiedMountinfo, pid: 42,
			dirs:   map[string]uint64{"/sys/fs/cgroup/kubepods/besteffort/podabc/ctr1": 7002},
			wantID: 7002, wantDir: "/sys/fs/cgroup/kubepods/besteffort/podabc/ctr1"},
		{name: "pid whose cgroup is gone", mountinfo: unifiedMountinfo, pid: 42, dirs: map[string]uint64{},
			wantDir: "/sys/fs/cgroup/kubepods/besteffort/podabc/ctr1", err: "cgroup directory /sys/fs/cgroup/kubepods/besteffort/podabc/ctr1"},
		{name: "pid gone", mountinfo: unifiedMountinfo, pid: 99, wantDir: "/proc/99/cgroup", err: "read /proc/99/cgroup"},
		{name: "deleted cgroup", mountinfo: unifiedMountinfo, pid: 43, wantDir: "/proc/43/cgroup", err: "was deleted"},
		{name: "v1 only process", mountinfo: hybridMountinfo, pid: 44, wantDir: "/proc/44/cgroup", err: "no cgroup v2"},
		{name: "outside cgroup namespace", mountinfo: unifiedMountinfo, pid: 45, wantDir: "/proc/45/cgroup", err: "cgroup namespace"},
		{name: "bind of a sub-tree", mountinfo: strings.SplitAfter(bindMountinfo, "\n")[0], pid: 46,
			dirs:   map[string]uint64{"/sys/fs/cgroup/ctr9": 9},
			wantID: 9, wantDir: "/sys/fs/cgroup/ctr9"},
		{name: "outside a bind of a sub-tree", mountinfo: strings.SplitAfter(bindMountinfo, "\n")[0], pid: 47,
			wantDir: "/proc/47/cgroup", err: "outside the cgroup2 mount"},
		{name: "cgroupfs path hybrid", mountinfo: hybridMountinfo, path: "/kubepods/besteffort/podabc/ctr1",
			dirs:   map[string]uint64{"/sys/fs/cgroup/unified/kubepods/besteffort/podabc/ctr1": 7001},
			wantID: 7001, wantDir: "/sys/fs/cgroup/unified/kubepods/besteffort/podabc/ctr1"},
		{name: "systemd path unified", mountinfo: unifiedMountinfo, path: "kubepods-besteffort-podabc.slice:cri-containerd:ctr1",
			dirs:   map[string]uint64{"/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabc.slice/cri-containerd-ctr1.scope": 7003},
			wantID: 7003, wantDir: "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabc.slice/cri-containerd-ctr1.scope"},
		{name: "systemd path hybrid, missing", mountinfo: hybridMountinfo, path: "kubepods-podabc.slice:cri-containerd:ctr1",
			wantDir: "/sys/fs/cgroup/unified/kubepods.slice/kubepods-podabc.slice/cri-containerd-ctr1.scope",
			err:     "cgroup directory /sys/fs/cgroup/unified/kubepods.slice/kubepods-podabc.slice/cri-containerd-ctr1.scope"},
		{name: "bad path", mountinfo: unifiedMountinfo, path: "a--b.slice:x:y", err: "empty component"},
		{name: "pid in the root cgroup", mountinfo: unifiedMountinfo, pid: 48,
			dirs: map[string]uint64{"/sys/fs/cgroup": 1}, wantDir: "/proc/48/cgroup", err: "top of the cgroup2 hierarchy"},
		{name: "pid in captrace's cgroup", mountinfo: unifiedMountinfo, pid: 49,
			dirs: map[string]uint64{"/sys/fs/cgroup/system.slice/captrace.service": 5}, wantDir: "/proc/49/cgroup", err: "captrace's own"},
		{name: "cgroupfs path of captrace's cgroup", mountinfo: unifiedMountinfo, path: "/system.slice/captrace.service",
			dirs: map[string]uint64{"/sys/fs/cgroup/system.slice/captrace.service": 5}, err: "captrace's own"},
		{name: "top of a bind mount", mountinfo: strings.SplitAfter(bindMountinfo, "\n")[0], path: "/kubepods/pod1",
			dirs: map[string]uint64{"/sys/fs/cgroup": 3}, err: "top of the cgroup2 hierarchy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := fakeHost{files: map[string]string{"/proc/self/mountinfo": tc.mountinfo}, dirs: tc.dirs}
			for k, v := range files {
				h.files[k] = v
			}
			r, err := newResolver(h)
			if err != nil {
				t.Fatal(err)
			}
			var id uint64
			var dir string
			if tc.pid != 0 {
				id, dir, err = r.FromPID(tc.pid)
			} else {
				id, dir, err = r.FromCgroupsPath(tc.path)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %d, %v; want error containing %q", id, err, tc.err)
				}
			} else if err != nil || id != tc.wantID {
				t.Fatalf("got %d, %v; want %d", id, err, tc.wantID)
			}
			if dir != tc.wantDir {
				t.Errorf("tried %q, want %q", dir, tc.wantDir)
			}
		})
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:   "/a b",
		`/a\134b`:   `/a\b`,
		`/tail\04`:  `/tail\04`,
		`/plain`:    "/plain",
		`/x\011\n`:  "/x\t\\n",
		`\040`:      " ",
		`/bad\999x`: `/bad\999x`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}
