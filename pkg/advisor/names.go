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
// runc versions keep "runc".
const runcCommPrefix = "runc:["

// isRuntimeComm reports whether comm is one of runc's setup processes. It
// classifies only records written before captrace recorded the kernel's
// answer (schema.Runtime): a workload can take any of these names with
// prctl(PR_SET_NAME), so it is never used for what the tracer reports.
func isRuntimeComm(comm string) bool {
	return comm == "runc" || comm == "runc init" || strings.HasPrefix(comm, runcCommPrefix)
}
