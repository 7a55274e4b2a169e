package advisor

import (
	"strings"

	"github.com/captrace/captrace/bpf"
)

// kernelCapName is the kernel's name of cap, e.g. "CAP_SYS_NICE", or
// "CAP_<n>" for a number bpf's table does not know.
func kernelCapName(c bpf.Capability) string { return c.String() }

// KubeCapName maps a capability name as captrace records it ("CAP_SYS_NICE",
// any case) to the name a Kubernetes securityContext takes ("SYS_NICE"): the
// kernel's name without the prefix. ok is false for names that are no known
// capability, such as "CAP_41" from a kernel newer than bpf's table: those
// are never put into a recommendation.
func KubeCapName(name string) (kube string, ok bool) {
	n := strings.ToUpper(strings.TrimSpace(name))
	n = strings.TrimPrefix(n, "CAP_")
	for c := bpf.Capability(0); c <= bpf.LastCapability; c++ {
		if c.String()[len("CAP_"):] == n {
			return n, true
		}
	}
	return n, false
}

// Runtime comms: runc names its setup processes "runc:[0:PARENT]",
// "runc:[1:CHILD]" and "runc:[2:INIT]" (nsexec's prctl(PR_SET_NAME)) until the
// init process execs the container's entrypoint or the exec'd command; newer
// runc versions keep "runc". Checks made under these names set up the
// container (devices, uid/gid switch, signals), they are not the workload.
const runcCommPrefix = "runc:["

// isRuntimeComm reports whether comm is one of runc's setup processes.
func isRuntimeComm(comm string) bool {
	return comm == "runc" || comm == "runc init" || strings.HasPrefix(comm, runcCommPrefix)
}

// isRuntimeCommBytes is isRuntimeComm on the kernel's NUL-padded comm, without
// allocating (it runs for every event).
func isRuntimeCommBytes(comm *[16]byte) bool {
	n := 0
	for n < len(comm) && comm[n] != 0 {
		n++
	}
	c := comm[:n]
	switch {
	case string(c) == "runc", string(c) == "runc init":
		return true
	case len(c) >= len(runcCommPrefix) && string(c[:len(runcCommPrefix)]) == runcCommPrefix:
		return true
	}
	return false
}
