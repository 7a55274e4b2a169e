package bpf

import "strconv"

// Capability is a Linux capability number (CAP_CHOWN = 0 … CAP_CHECKPOINT_RESTORE = 40).
type Capability int32

// capNames are the kernel's names (include/uapi/linux/capability.h), by number.
var capNames = [...]string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
	"CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
	"CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
	"CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// LastCapability is the highest capability number this table names
// (CAP_LAST_CAP of the kernel it was written for).
const LastCapability = Capability(len(capNames) - 1)

// Known reports whether c is a capability this table names; a newer kernel's
// capability is not, and prints as "CAP_<n>".
func (c Capability) Known() bool { return c >= 0 && c <= LastCapability }

// Capability numbers the package itself refers to.
const (
	capSetgid    Capability = 6
	capSetuid    Capability = 7
	capSetpcap   Capability = 8
	capNetAdmin  Capability = 12
	capNetRaw    Capability = 13
	capSysRawio  Capability = 17
	capSysPtrace Capability = 19
	capSysAdmin  Capability = 21
	capSysNice   Capability = 23
	capSysRes    Capability = 24
	capSyslog    Capability = 34
	capPerfmon   Capability = 38
	capBPF       Capability = 39
)

// String returns the kernel's name, e.g. "CAP_SYS_NICE"; unknown numbers print as "CAP_<n>".
func (c Capability) String() string {
	if c.Known() {
		return capNames[c]
	}
	return "CAP_" + strconv.Itoa(int(c))
}

// SyscallName returns the name of syscall nr on this architecture as the seed
// prints it, e.g. "SYS_SETPRIORITY"; -1 gives "" and unknown numbers "SYS_<n>".
func SyscallName(nr int32) string {
	if nr < 0 {
		return ""
	}
	if int(nr) < len(syscallNames) && syscallNames[nr] != "" {
		return syscallNames[nr]
	}
	return "SYS_" + strconv.Itoa(int(nr))
}
