package bpf

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// settingStateShift is SETTING_STATE_SHIFT: the settings flags' upper bits
// hold the container's index in container_states.
const settingStateShift = 8

// maxContainerStates is the most indexes the flags' upper 24 bits can name (config.MaxContainersLimit is lower).
const maxContainerStates = 1<<(32-settingStateShift) - 1

// containerState mirrors struct container_state.
type containerState struct {
	IntervalNs  uint64
	ToleranceNs uint64
	Tat         uint64
	RateLimited uint64
	RingLost    uint64
}

// containerStates hands out the indexes of container_states, one per traced
// cgroup, under the Tracer's mutex. An index is reused only after Untrace
// has read its counters into released.
type containerStates struct {
	index    map[uint64]uint32 // traced cgroup -> index (never 0)
	free     []uint32
	next     uint32 // lowest index never handed out
	max      uint32
	released map[uint64]ContainerLosses // untraced, counts not yet taken
}

func newContainerStates(maxTraced int) containerStates {
	return containerStates{
		index:    map[uint64]uint32{},
		next:     1,
		max:      uint32(min(maxTraced, maxContainerStates)),
		released: map[uint64]ContainerLosses{},
	}
}

// rateState converts a rate and burst to the kernel's cell rate terms.
func rateState(s Settings) containerState {
	if s.RateLimit == 0 {
		return containerState{}
	}
	interval := uint64(time.Second) / uint64(s.RateLimit)
	burst := uint64(s.RateBurst)
	if burst == 0 {
		burst = uint64(s.RateLimit)
	}
	return containerState{IntervalNs: interval, ToleranceNs: (burst - 1) * interval}
}

// acquire gives cgroupID its index and writes its limit: a new container
// starts with zero counters and a full burst; a known one keeps its
// counters and schedule and takes the new limit.
func (c *containerStates) acquire(m *ebpf.Map, cgroupID uint64, s Settings) (uint32, error) {
	want := rateState(s)
	if idx, ok := c.index[cgroupID]; ok {
		var cur containerState
		if err := m.Lookup(idx, &cur); err != nil {
			return 0, fmt.Errorf("reading container_states[%d]: %w", idx, err)
		}
		cur.IntervalNs, cur.ToleranceNs = want.IntervalNs, want.ToleranceNs
		if err := m.Update(idx, cur, ebpf.UpdateExist); err != nil {
			return 0, fmt.Errorf("updating container_states[%d]: %w", idx, err)
		}
		return idx, nil
	}
	var idx uint32
	switch {
	case len(c.free) > 0:
		idx = c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
	case c.next <= c.max:
		idx = c.next
		c.next++
	default:
		return 0, fmt.Errorf("no free container_states entry (%d in use): tracer.max_containers bounds it", c.max)
	}
	if err := m.Update(idx, want, ebpf.UpdateExist); err != nil {
		c.free = append(c.free, idx)
		return 0, fmt.Errorf("writing container_states[%d]: %w", idx, err)
	}
	delete(c.released, cgroupID)
	c.index[cgroupID] = idx
	return idx, nil
}

// release keeps cgroupID's final counters for ContainerLosses and frees its index.
func (c *containerStates) release(m *ebpf.Map, cgroupID uint64) {
	idx, ok := c.index[cgroupID]
	if !ok {
		return
	}
	delete(c.index, cgroupID)
	var cur containerState
	if err := m.Lookup(idx, &cur); err == nil {
		// Bounded like the filter: whoever untraces takes the counts soon
		// after; a caller that never does must not grow this without end.
		if len(c.released) >= int(c.max) {
			for k := range c.released {
				delete(c.released, k)
				break
			}
		}
		c.released[cgroupID] = ContainerLosses{RateLimited: cur.RateLimited, RingLost: cur.RingLost}
	}
	c.free = append(c.free, idx)
}

// ContainerLosses returns the checks of cgroupID the kernel dropped (rate
// limit) or lost (ring full). For a traced cgroup they are the counts so
// far; after Untrace, the final counts, returned once. ok is false for a
// cgroup the tracer does not know (never traced, or already reported).
func (t *Tracer) ContainerLosses(cgroupID uint64) (losses ContainerLosses, ok bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ContainerLosses{}, false, ErrClosed
	}
	if idx, traced := t.states.index[cgroupID]; traced {
		var cur containerState
		if err := t.lt.maps.States.Lookup(idx, &cur); err != nil {
			return ContainerLosses{}, false, fmt.Errorf("reading container_states[%d]: %w", idx, err)
		}
		return ContainerLosses{RateLimited: cur.RateLimited, RingLost: cur.RingLost}, true, nil
	}
	losses, ok = t.states.released[cgroupID]
	delete(t.states.released, cgroupID)
	return losses, ok, nil
}
