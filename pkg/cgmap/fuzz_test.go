package cgmap

import (
	"path"
	"strings"
	"testing"
)

// FuzzCgroupsPath: whatever the cgroups path, it resolves to a clean
// absolute cgroup that is not the root, has no "..", and (systemd form)
// stays inside its slice; the resolver never stats the top of the mount.
func FuzzCgroupsPath(f *testing.F) {
	for _, seed := range []string{
		"/kubepods/besteffort/pod0b2d-9a1e/abc123",
		"kubepods-besteffort-pod0b2d_9a1e.slice:cri-containerd:abc123",
		"a.slice:../../../system.slice/kubelet:x",
		"/", "//./", "/kubepods/..", ":cri-containerd:x", "-.slice:x:y",
		"kubepods.slice:cri-containerd:extra.slice", "a-b-c.slice::x", "a\\x2db.slice:p:n",
	} {
		f.Add(seed)
	}
	h := fakeHost{files: map[string]string{"/proc/self/mountinfo": unifiedMountinfo}, dirs: map[string]uint64{"/sys/fs/cgroup": 1}}
	r, err := newResolver(h)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, cgroupsPath string) {
		cg, err := CgroupsPathToCgroup(cgroupsPath)
		if err == nil {
			if cg == "/" || !strings.HasPrefix(cg, "/") || path.Clean(cg) != cg {
				t.Fatalf("%q → %q: not a clean cgroup below the root", cgroupsPath, cg)
			}
			for _, elem := range strings.Split(cg, "/") {
				if elem == ".." {
					t.Fatalf("%q → %q holds ..", cgroupsPath, cg)
				}
			}
			if parts := strings.Split(cgroupsPath, ":"); len(parts) == 3 && parts[0] != "" {
				parent, err := ExpandSlice(parts[0])
				if err != nil || !strings.HasPrefix(cg, strings.TrimSuffix(parent, "/")+"/") {
					t.Fatalf("%q → %q: outside its slice %q (%v)", cgroupsPath, cg, parent, err)
				}
			}
		}
		if _, dir, err := r.FromCgroupsPath(cgroupsPath); err == nil || dir == "/sys/fs/cgroup" {
			t.Fatalf("%q resolved to %q (only the root exists here): %v", cgroupsPath, dir, err)
		}
	})
}
