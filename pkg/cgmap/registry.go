// Package cgmap maps containers to cgroup v2 IDs and keeps the registry of
// traced containers, which it mirrors into the kernel's filter map.
package cgmap

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/captrace/captrace/bpf"
	"github.com/sirupsen/logrus"
)

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
	// WorkloadKind and Workload name the pod's owner (pkg/workload: "Deployment",
	// "web"); Image is the container's image reference ("" when unknown);
	// Node is the node captrace runs on.
	WorkloadKind string
	Workload     string
	Image        string
	Node         string
	// Proposed is the pod's captrace.io/proposed-capabilities, when
	// HasProposal: a check granted today of a capability outside it would be
	// denied under the proposal (would_deny).
	Proposed    bpf.CapSet
	HasProposal bool
	CgroupID    uint64
	Settings    bpf.Settings
}

// Listener is told of every change of what is traced, in the order the
// registry made them: Traced when a container starts being traced (or its
// settings or cgroup change), Untraced exactly once when it stops, for
// whatever reason (StopContainer, Synchronize, another container taking its
// cgroup). Every container reported Traced is reported Untraced before the
// registry forgets it. The calls come under the registry's lock, from the
// NRI handlers: they must only queue, never wait.
type Listener interface {
	Traced(c Container)
	Untraced(c Container)
}

// Registry is the set of traced containers, keyed by container ID and by cgroup
// ID, mirrored into the kernel's filter map. Safe for concurrent use.
//
// Writers (NRI handlers) hold the lock across the filter update so the map
// and the registry never disagree. The event path does not use the registry:
// it keeps its own index, fed by a Listener (pkg/pipeline), so it never waits
// for a handler's syscalls.
type Registry struct {
	filter Filter
	log    logrus.FieldLogger

	mu        sync.RWMutex
	byID      map[string]Container
	byCgroup  map[uint64]string // cgroup ID → container ID
	listeners []Listener

	untraceFailed atomic.Uint64
}

// RegistryStats are the registry's counters.
type RegistryStats struct {
	// Traced is the number of traced containers.
	Traced int
	// UntraceFailed counts filter map deletions that failed; the container
	// was dropped from the registry anyway (its cgroup is gone or going), and
	// the filter retries the deletion (bpf.Stats.StaleFilterEntries).
	UntraceFailed uint64
}

// NewRegistry returns an empty registry that drives filter.
func NewRegistry(filter Filter, log logrus.FieldLogger) *Registry {
	if log == nil {
		log = logrus.StandardLogger()
	}
	return &Registry{
		filter:   filter,
		log:      log,
		byID:     make(map[string]Container),
		byCgroup: make(map[uint64]string),
	}
}

// Listen adds l to the listeners. Call it before the registry is used.
func (r *Registry) Listen(l Listener) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.listeners = append(r.listeners, l)
}

func (r *Registry) tracedLocked(c Container) {
	for _, l := range r.listeners {
		l.Traced(c)
	}
}

func (r *Registry) untracedLocked(c Container) {
	for _, l := range r.listeners {
		l.Untraced(c)
	}
}

// Add traces c (c.CgroupID must be resolved). An error leaves the registry unchanged.
//
// Adding a container ID again updates its settings or cgroup. A cgroup ID
// already held by another container ID passes to c: the kernel reports one
// cgroup, so only one container can own it.
func (r *Registry) Add(c Container) error {
	if c.ID == "" {
		return errors.New("cgmap: container without an ID")
	}
	if c.CgroupID == 0 {
		return fmt.Errorf("cgmap: container %s has no cgroup ID", c.ID)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addLocked(c)
}

func (r *Registry) addLocked(c Container) error {
	old, had := r.byID[c.ID]
	if had && old.CgroupID == c.CgroupID && !old.Settings.Adopted {
		// Traced since before its entrypoint ran (StartContainer): the
		// kernel knows its workload's tasks, and a later Synchronize
		// (a reconnection) does not make it adopted.
		c.Settings.Adopted = false
	}
	if had && old == c {
		return nil
	}
	if err := r.filter.Trace(c.CgroupID, c.Settings); err != nil {
		return fmt.Errorf("cgmap: trace cgroup %d of container %s: %w", c.CgroupID, c.ID, err)
	}
	if had && old.CgroupID != c.CgroupID {
		// The same container in another cgroup: the old one leaves the
		// filter; listeners learn the new cgroup from Traced below.
		if r.byCgroup[old.CgroupID] == old.ID {
			delete(r.byCgroup, old.CgroupID)
		}
		r.untraceFilter(old)
	}
	if owner, ok := r.byCgroup[c.CgroupID]; ok && owner != c.ID {
		r.log.WithFields(logrus.Fields{"cgroup_id": c.CgroupID, "container_id": c.ID, "previous_container_id": owner}).
			Warn("cgroup already traced for another container; the newer container takes it over")
		// The previous owner stops being traced: its listeners are told, so
		// its summary is written instead of waiting for shutdown.
		prev := r.byID[owner]
		delete(r.byID, owner)
		r.untracedLocked(prev)
	}
	r.byID[c.ID] = c
	r.byCgroup[c.CgroupID] = c.ID
	r.tracedLocked(c)
	return nil
}

// untraceFilter removes c's cgroup from the kernel filter; a failure is
// logged with the cgroup and counted (the filter retries it).
func (r *Registry) untraceFilter(c Container) {
	if err := r.filter.Untrace(c.CgroupID); err != nil {
		r.untraceFailed.Add(1)
		r.log.WithError(err).WithFields(logrus.Fields{"cgroup_id": c.CgroupID, "container_id": c.ID}).
			Warn("could not remove cgroup from the filter map; the container is finished anyway")
	}
}

// removeLocked stops tracing c, which is in byID.
func (r *Registry) removeLocked(c Container) {
	delete(r.byID, c.ID)
	if r.byCgroup[c.CgroupID] == c.ID {
		delete(r.byCgroup, c.CgroupID)
	}
	r.untraceFilter(c)
	r.untracedLocked(c)
}

// Remove untraces the container with this ID and returns what was known of it.
func (r *Registry) Remove(containerID string) (Container, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.byID[containerID]
	if !ok {
		return Container{}, false
	}
	r.removeLocked(c)
	return c, true
}

// Sync makes the registry hold exactly cs, untracing everything else.
func (r *Registry) Sync(cs []Container) error {
	_, err := r.Reconcile(cs)
	return err
}

// Reconcile is Sync that also returns the containers it stopped tracing, so
// that their owner can be told. A container of cs that cannot be traced is
// left out and reported in the error; the others are still applied.
func (r *Registry) Reconcile(cs []Container) (removed []Container, err error) {
	want := make(map[string]struct{}, len(cs))
	for _, c := range cs {
		want[c.ID] = struct{}{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, c := range r.byID {
		if _, ok := want[id]; !ok {
			r.removeLocked(c)
			removed = append(removed, c)
		}
	}
	var errs []error
	for _, c := range cs {
		if c.ID == "" || c.CgroupID == 0 {
			errs = append(errs, fmt.Errorf("cgmap: container %q has no cgroup ID", c.ID))
			continue
		}
		if err := r.addLocked(c); err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

// Lookup returns the traced container whose cgroup has this ID.
func (r *Registry) Lookup(cgroupID uint64) (Container, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	id, ok := r.byCgroup[cgroupID]
	if !ok {
		return Container{}, false
	}
	return r.byID[id], true
}

// Get returns the traced container with this container ID.
func (r *Registry) Get(containerID string) (Container, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c, ok := r.byID[containerID]
	return c, ok
}

// List returns the traced containers, in no particular order.
func (r *Registry) List() []Container {
	r.mu.RLock()
	defer r.mu.RUnlock()
	cs := make([]Container, 0, len(r.byID))
	for _, c := range r.byID {
		cs = append(cs, c)
	}
	return cs
}

// Len is the number of traced containers.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byID)
}

// Stats returns the registry's counters.
func (r *Registry) Stats() RegistryStats {
	return RegistryStats{Traced: r.Len(), UntraceFailed: r.untraceFailed.Load()}
}
