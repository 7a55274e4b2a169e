package cgmap

import (
	"strings"
	"testing"
)

// A pod on a cgroup v2 node (the DaemonSet): containerd gave it a cgroup
// namespace of its own, and it mounts the node's hierarchy at /sys/fs/cgroup
// (hostPath). The kernel shows that mount's root, and other containers'
// /proc/PID/cgroup, relative to the pod's namespace.
func TestResolverInCgroupNamespace(t *testing.T) {
	const ctr = "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabc.slice/cri-containerd-ctr1.scope"
	hostRoot := "1380 1370 0:30 /../../../.. /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n"
	files := map[string]string{
		"/proc/self/mountinfo": hostRoot,
		"/proc/7/cgroup":       "0::/../../../../kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabc.slice/cri-containerd-ctr1.scope\n",
		"/proc/8/cgroup":       "0::/../../../../system.slice/containerd.service\n",
	}
	r, err := newResolver(fakeHost{files: files, dirs: map[string]uint64{ctr: 4242, "/sys/fs/cgroup/system.slice/containerd.service": 12}})
	if err != nil {
		t.Fatal(err)
	}
	if id, dir, err := r.FromCgroupsPath("kubepods-besteffort-podabc.slice:cri-containerd:ctr1"); err != nil || id != 4242 || dir != ctr {
		t.Errorf("cgroups path: %d %s %v, want 4242 %s", id, dir, err, ctr)
	}
	if id, dir, err := r.FromPID(7); err != nil || id != 4242 || dir != ctr {
		t.Errorf("PID: %d %s %v, want 4242 %s", id, dir, err, ctr)
	}
	if id, _, err := r.FromPID(8); err != nil || id != 12 {
		t.Errorf("a host service's PID: %d %v, want 12", id, err)
	}

	// The mount is an ancestor of the namespace but not the hierarchy's root
	// (it has cgroup.type): paths from outside it stay unresolvable.
	files["/sys/fs/cgroup/cgroup.type"] = "domain\n"
	r, err = newResolver(fakeHost{files: files})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.FromCgroupsPath("/kubepods/ctr1"); err == nil || !strings.Contains(err.Error(), "outside the cgroup2 mount") {
		t.Errorf("got %v, want outside the cgroup2 mount", err)
	}
}
