// Package cgmap maps containers to cgroup v2 IDs and keeps the registry of
// traced containers, which it mirrors into the kernel's filter map.
package cgmap

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

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

// Registry is the set of traced containers, keyed by container ID and by cgroup
// ID, mirrored into the kernel's filter map. Safe for concurrent use.
//
// Writers (NRI handlers) hold the write lock across the filter update so the
// map and the registry never disagree; the event path only takes the read
// lock and copies a Container out, which does not allocate.
type Registry struct {
	filter Filter
	log    logrus.FieldLogger

	mu       sync.RWMutex
	byID     map[string]Container
	byCgroup map[uint64]string // cgroup ID → container ID
	// removed keeps what was known of untraced cgroups for RemovedGrace, in
	// removal order: their last checks are still in the ring buffer when
	// StopContainer arrives (a one-shot container exits right after its
	// check), and must still be enriched. cgroup v2 IDs are never reused, so
	// a late Lookup cannot name the wrong container.
	removed      map[uint64]Container
	removedOrder []removal
	now          func() time.Time

	untraceFailed atomic.Uint64
}

// RemovedGrace is how long Lookup still finds an untraced container.
const RemovedGrace = 10 * time.Second

type removal struct {
	cgroupID uint64
	at       time.Time
}

// RegistryStats are the registry's counters.
type RegistryStats struct {
	// Traced is the number of traced containers.
	Traced int
	// UntraceFailed counts filter map deletions that failed; the container
	// was dropped from the registry anyway (its cgroup is gone or going).
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
		removed:  make(map[uint64]Container),
		now:      time.Now,
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
	if had && old == c {
		return nil
	}
	if err := r.filter.Trace(c.CgroupID, c.Settings); err != nil {
		return fmt.Errorf("cgmap: trace cgroup %d of container %s: %w", c.CgroupID, c.ID, err)
	}
	if had && old.CgroupID != c.CgroupID {
		r.untraceLocked(old)
	}
	if owner, ok := r.byCgroup[c.CgroupID]; ok && owner != c.ID {
		r.log.WithFields(logrus.Fields{"cgroup_id": c.CgroupID, "container_id": c.ID, "previous_container_id": owner}).
			Warn("cgroup already traced for another container; the newer container takes it over")
		delete(r.byID, owner)
	}
	r.byID[c.ID] = c
	r.byCgroup[c.CgroupID] = c.ID
	r.pruneRemovedLocked()
	return nil
}

// untraceLocked removes c's cgroup from the filter and the cgroup index.
func (r *Registry) untraceLocked(c Container) {
	if r.byCgroup[c.CgroupID] == c.ID {
		delete(r.byCgroup, c.CgroupID)
		r.removed[c.CgroupID] = c
		r.removedOrder = append(r.removedOrder, removal{c.CgroupID, r.now()})
	}
	r.pruneRemovedLocked()
	if err := r.filter.Untrace(c.CgroupID); err != nil {
		r.untraceFailed.Add(1)
		r.log.WithError(err).WithFields(logrus.Fields{"cgroup_id": c.CgroupID, "container_id": c.ID}).
			Warn("could not remove cgroup from the filter map")
	}
}

// pruneRemovedLocked forgets the untraced containers older than RemovedGrace.
func (r *Registry) pruneRemovedLocked() {
	cutoff := r.now().Add(-RemovedGrace)
	n := 0
	for n < len(r.removedOrder) && r.removedOrder[n].at.Before(cutoff) {
		delete(r.removed, r.removedOrder[n].cgroupID)
		n++
	}
	if n > 0 {
		r.removedOrder = append(r.removedOrder[:0], r.removedOrder[n:]...)
	}
}

// Remove untraces the container with this ID and returns what was known of it.
func (r *Registry) Remove(containerID string) (Container, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.byID[containerID]
	if !ok {
		return Container{}, false
	}
	delete(r.byID, containerID)
	r.untraceLocked(c)
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
			delete(r.byID, id)
			r.untraceLocked(c)
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

// Lookup returns the container whose cgroup has this ID: traced now, or
// untraced less than RemovedGrace ago (forgotten at the next Add or Remove
// after that). The event path calls it.
func (r *Registry) Lookup(cgroupID uint64) (Container, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if id, ok := r.byCgroup[cgroupID]; ok {
		return r.byID[id], true
	}
	c, ok := r.removed[cgroupID]
	return c, ok
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
