// Package cgmap maps containers to cgroup v2 IDs and keeps the registry of
// traced containers, which it mirrors into the kernel's filter map.
package cgmap

import "github.com/captrace/captrace/bpf"

// Filter is the part of the tracer the registry drives: the kernel's filter
// map. *bpf.Tracer implements it; tests use a fake.
type Filter interface {
	Trace(cgroupID uint64, s bpf.Settings) error
	Untrace(cgroupID uint64) error
}

// Container is what captrace knows of one traced container; it enriches events.
type Container struct {
	ID        string // container ID
	Name      string // container name in the pod
	Namespace string
	Pod       string
	PodUID    string
	CgroupID  uint64
	Settings  bpf.Settings
}
