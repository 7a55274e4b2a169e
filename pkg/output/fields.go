// Package output turns enriched capability events into logfmt lines and
// journald entries. The field names below are the one documented set (README),
// shared by every sink and by the advisor's reader.
package output

// logfmt keys. Values are written as the seed's columns: cap "CAP_SYS_NICE",
// syscall "SYS_SETPRIORITY" ("" when the check was made outside a system call),
// capable "true"/"false", audit and insetid "1"/"0", time RFC 3339 in UTC with
// nanoseconds. journald fields carry the same values.
const (
	KeyTime        = "time"
	KeyNamespace   = "namespace"
	KeyPod         = "pod"
	KeyPodUID      = "pod_uid"
	KeyContainer   = "container"
	KeyContainerID = "container_id"
	KeyComm        = "comm"
	KeyPid         = "pid"
	KeyTid         = "tid"
	KeyUid         = "uid"
	KeyGid         = "gid"
	KeyCapable     = "capable"
	KeyAudit       = "audit"
	KeyInsetid     = "insetid"
	KeyCap         = "cap"
	KeySyscall     = "syscall"
	KeyCgroupID    = "cgroup_id" // cgroup v2 ID of the container (inode of its cgroup directory)
)

// Workload identity (pkg/workload), on every event and summary: the owner's
// kind ("Deployment") and name, the container's image, the node.
const (
	KeyWorkloadKind   = "workload_kind"
	KeyWorkload       = "workload"
	KeyImage          = "image"
	KeyNode           = "node"
	FieldWorkloadKind = "K8S_WORKLOAD_KIND"
	FieldWorkload     = "K8S_WORKLOAD_NAME"
	FieldImage        = "CONTAINER_IMAGE"
	FieldNode         = "K8S_NODE_NAME"
)

// Keys of every logfmt line that logrus sets itself.
const (
	KeyLevel = "level"
	KeyMsg   = "msg"
)

// EventMessage is the msg of every event line (msg=cap_check). Operational
// lines (start-up, tier, NRI connection, stats, losses) never use it, so
// `grep msg=cap_check` or a logfmt reader keeps events only.
const EventMessage = "cap_check"

// KeyOrder is the order of keys in every logfmt line: these first, in this
// order, then any other key alphabetically. insetid appears only where the
// attach tier knows it (fexit and kprobe from opts; tp_btf when the kernel's
// symbol addresses resolved, from the ns_capable_setid frame).
var KeyOrder = []string{
	KeyTime, KeyLevel, KeyMsg,
	KeyNamespace, KeyPod, KeyContainer, KeyContainerID, KeyPodUID,
	KeyWorkloadKind, KeyWorkload, KeyImage, KeyNode,
	KeyComm, KeyPid, KeyTid, KeyUid, KeyGid,
	KeyCap, KeyCapable, KeyAudit, KeyInsetid, KeySyscall, KeyCgroupID,
}

// journald fields. Names starting with '_' belong to journald and are never set.
const (
	FieldIdentifier  = "SYSLOG_IDENTIFIER" // always "captrace"
	FieldNamespace   = "K8S_NAMESPACE"
	FieldPod         = "K8S_POD_NAME"
	FieldPodUID      = "K8S_POD_UID"
	FieldContainer   = "K8S_CONTAINER_NAME"
	FieldContainerID = "CONTAINER_ID"
	FieldCap         = "CAP"
	FieldCapable     = "CAPABLE"
	FieldAudit       = "AUDIT"
	FieldInsetid     = "INSETID"
	FieldSyscall     = "SYSCALL"
	FieldComm        = "PROC_COMM"
	FieldPid         = "PROC_PID"
	FieldTid         = "PROC_TID"
	FieldUid         = "PROC_UID"
	FieldGid         = "PROC_GID"
	FieldEventTime   = "CAPTRACE_TIME" // wall time of the check, RFC 3339 with ns
	FieldCgroupID    = "CAPTRACE_CGROUP_ID"
	// MESSAGE and PRIORITY are set by every entry too (journal.Send's arguments).
	FieldMessage  = "MESSAGE"
	FieldPriority = "PRIORITY"
)

// Identifier is the SYSLOG_IDENTIFIER of every captrace journal entry.
const Identifier = "captrace"
