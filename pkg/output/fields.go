// Package output turns enriched capability events into logfmt lines and
// journald entries. The field names below are the one documented set (README),
// shared by every sink and by the advisor's reader.
package output

// logfmt keys.
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
)

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
)

// Identifier is the SYSLOG_IDENTIFIER of every captrace journal entry.
const Identifier = "captrace"
