package advisor

import (
	"strconv"
	"strings"

	"github.com/captrace/captrace/bpf"
)

// kubeCapNames are the capability names a Kubernetes securityContext accepts,
// indexed by the kernel's capability number: the kernel's CAP_ name without
// the prefix. The kernel's numbering is ABI (include/uapi/linux/capability.h).
var kubeCapNames = [...]string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL",
	"SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE",
	"NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
	"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
	"SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
	"SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
	"SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
	"BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

// kernelCapName is the kernel's name of cap, e.g. "CAP_SYS_NICE"; numbers the
// table does not know print as "CAP_<n>", as bpf.Capability.String does.
func kernelCapName(c bpf.Capability) string {
	if c >= 0 && int(c) < len(kubeCapNames) {
		return "CAP_" + kubeCapNames[c]
	}
	return "CAP_" + strconv.Itoa(int(c))
}

// KubeCapName maps a capability name as captrace records it ("CAP_SYS_NICE",
// any case) to the name a Kubernetes securityContext takes ("SYS_NICE"). ok is
// false for names that are no known capability, such as "CAP_41" from a
// kernel newer than this table: those are never put into a recommendation.
func KubeCapName(name string) (kube string, ok bool) {
	n := strings.ToUpper(strings.TrimSpace(name))
	n = strings.TrimPrefix(n, "CAP_")
	for _, k := range kubeCapNames {
		if k == n {
			return k, true
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
