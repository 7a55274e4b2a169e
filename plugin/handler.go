package plugin

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/containerd/nri/pkg/api"
	"github.com/sirupsen/logrus"
)

// handler is what the NRI stub calls. The stub subscribes the plugin to the
// events whose methods it has: Synchronize, StartContainer, StopContainer,
// RemoveContainer and RemovePodSandbox, nothing else.
//
// Every event holds containerd's runtime-wide lock, so each method does O(1)
// work: a map lookup or two, at most one read of /proc/PID/cgroup and one
// stat. None returns an error: a pod must never fail because of tracing.
type handler struct{ p *Plugin }

// Synchronize makes the registry hold exactly the running containers that
// opt in. It comes at every (re)connection, so whatever ended while captrace
// was away is dropped here.
func (h *handler) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	p := h.p
	defer p.observe("Synchronize", time.Now())
	byID := make(map[string]*api.PodSandbox, len(pods))
	for _, pod := range pods {
		byID[pod.GetId()] = pod
	}
	var traced []cgmap.Container
	for _, ctr := range ctrs {
		switch ctr.GetState() {
		case api.ContainerState_CONTAINER_RUNNING, api.ContainerState_CONTAINER_PAUSED:
		default:
			continue // created ones come back with StartContainer; stopped ones are done
		}
		pod := byID[ctr.GetPodSandboxId()]
		if pod == nil {
			continue
		}
		if c, ok := p.admit(pod, ctr, false); ok {
			// Running before captrace traced it: the kernel cannot tell its
			// runtime set-up from its workload (bpf.Settings.Adopted). The
			// registry keeps a container this process traced at its
			// StartContainer as it was.
			c.Settings.Adopted = true
			traced = append(traced, c)
		}
	}
	removed, err := p.reg.Reconcile(traced)
	refused := 0
	for _, c := range traced {
		// Those the filter refused are not traced; the registry told its
		// listeners of the others (cgmap.Listener).
		if _, ok := p.reg.Get(c.ID); !ok && p.failures.first(c.ID) {
			refused++
		}
	}
	if err != nil {
		// Counted once per container: the same refusal at the next
		// Synchronize (every reconnection) is not a new loss.
		p.traceFailed.Add(uint64(refused))
		p.log.WithError(err).Error("some opted-in containers could not be traced after synchronizing with containerd")
	}
	p.pruneWarned(pods)
	p.failures.keepOnly(ctrs)
	p.connects.Add(1)
	p.connected.Store(true)
	p.log.WithFields(logrus.Fields{"pods": len(pods), "containers": len(ctrs), "traced": p.reg.Len(), "dropped": len(removed)}).
		Info("synchronized with containerd")
	if p.opts.OnSynchronized != nil {
		p.opts.OnSynchronized()
	}
	return nil, nil
}

// StartContainer traces an opted-in container before its entrypoint runs:
// containerd calls it after runc created the cgroup and the init process,
// and waits for it.
func (h *handler) StartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p := h.p
	defer p.observe("StartContainer", time.Now())
	c, ok := p.admit(pod, ctr, true)
	if !ok {
		return nil
	}
	if err := p.reg.Add(c); err != nil {
		if p.failures.first(c.ID) {
			p.traceFailed.Add(1)
		}
		p.containerLog(pod, ctr).WithError(err).Error("container opts in to tracing but could not be traced")
	}
	return nil
}

// StopContainer stops tracing a container: containerd sends it once the
// container's processes are dead, so nothing more can be seen in its
// cgroup. Waiting for RemoveContainer instead would keep exited containers
// in the filter map and the advisor waiting (OnRemove) for as long as the
// kubelet keeps them: init containers until their pod is deleted, completed
// Jobs until garbage collection, a crash-looping container's last instance
// until its next restart.
func (h *handler) StopContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	defer h.p.observe("StopContainer", time.Now())
	h.p.forget(ctr)
	return nil, nil
}

// RemoveContainer stops tracing a container, for those whose StopContainer
// captrace missed (it was disconnected, or containerd restarted).
func (h *handler) RemoveContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) error {
	defer h.p.observe("RemoveContainer", time.Now())
	h.p.forget(ctr)
	return nil
}

// RemovePodSandbox forgets the warnings given about the pod: nothing of a
// pod that went away is kept (Synchronize prunes those whose removal
// captrace missed).
func (h *handler) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	h.p.warnedMu.Lock()
	delete(h.p.warned, pod.GetUid())
	h.p.warnedMu.Unlock()
	return nil
}

// forget untraces a container; the registry tells its listeners.
func (p *Plugin) forget(ctr *api.Container) {
	p.failures.forget(ctr.GetId())
	p.reg.Remove(ctr.GetId())
}

// admit applies the policy and resolves the cgroup of a container that opts
// in. preferPID resolves from the PID first (StartContainer), else from the
// cgroups path (Synchronize); each falls back to the other.
func (p *Plugin) admit(pod *api.PodSandbox, ctr *api.Container, preferPID bool) (cgmap.Container, bool) {
	d := p.opts.Policy.decide(pod, ctr)
	if d.problem != "" {
		p.warnOnce(pod, d)
	}
	if !d.trace {
		return cgmap.Container{}, false
	}
	id, tried, err := p.resolveCgroup(ctr, preferPID)
	if err != nil {
		if p.failures.first(ctr.GetId()) {
			p.cgroupMisses.Add(1)
		}
		p.containerLog(pod, ctr).WithError(err).WithFields(logrus.Fields{
			"tried": tried, "pid": ctr.GetPid(), "cgroups_path": ctr.GetLinux().GetCgroupsPath(),
		}).Error("container opts in to tracing but its cgroup v2 directory was not found; not traced")
		return cgmap.Container{}, false
	}
	return cgmap.Container{
		ID:        ctr.GetId(),
		Name:      ctr.GetName(),
		Namespace: pod.GetNamespace(),
		Pod:       pod.GetName(),
		PodUID:    pod.GetUid(),
		CgroupID:  id,
		Settings:  d.settings,

		WorkloadKind: d.workload.Kind,
		Workload:     d.workload.Name,
		Image:        d.image,
		Node:         p.opts.NodeName,
		Proposed:     d.proposed,
		HasProposal:  d.hasProposal,
	}, true
}

// resolveCgroup returns the cgroup ID, or the paths tried and why they failed.
func (p *Plugin) resolveCgroup(ctr *api.Container, preferPID bool) (uint64, []string, error) {
	pid, cgPath := ctr.GetPid(), ctr.GetLinux().GetCgroupsPath()
	var tried []string
	var errs []error
	try := func(byPID bool) (uint64, bool) {
		var id uint64
		var path string
		var err error
		if byPID {
			if pid == 0 {
				return 0, false
			}
			id, path, err = p.resolve.FromPID(pid)
		} else {
			if cgPath == "" {
				return 0, false
			}
			id, path, err = p.resolve.FromCgroupsPath(cgPath)
		}
		if err == nil {
			return id, true
		}
		if path != "" {
			tried = append(tried, path)
		}
		errs = append(errs, err)
		return 0, false
	}
	if id, ok := try(preferPID); ok {
		return id, nil, nil
	}
	if id, ok := try(!preferPID); ok {
		return id, nil, nil
	}
	if len(errs) == 0 {
		return 0, nil, errors.New("NRI gave neither a PID nor a cgroups path")
	}
	return 0, tried, errors.Join(errs...)
}

// warnOnce logs a pod's policy problem the first time it is seen. The
// annotation value comes from the pod's author: only a short prefix and its
// length are kept and logged (boundedValue).
func (p *Plugin) warnOnce(pod *api.PodSandbox, d decision) {
	k := warnKey{key: d.key, problem: d.problem}
	if d.key != "" {
		k.value = boundedValue(d.value)
	}
	uid := pod.GetUid()
	p.warnedMu.Lock()
	_, seen := p.warned[uid][k]
	if !seen {
		// Bound the memory: a node never holds this many pods at once, and
		// RemovePodSandbox and Synchronize forget the pods that went away.
		if len(p.warned) >= maxWarnedPods {
			clear(p.warned)
		}
		if p.warned[uid] == nil {
			p.warned[strings.Clone(uid)] = make(map[warnKey]struct{}, 1)
		}
		p.warned[uid][k] = struct{}{}
	}
	p.warnedMu.Unlock()
	if seen {
		return
	}
	p.policyWarnings.Add(1)
	l := p.log.WithFields(logrus.Fields{"namespace": boundedValue(pod.GetNamespace()), "pod": boundedValue(pod.GetName()), "pod_uid": boundedValue(uid)})
	if d.key != "" {
		l = l.WithFields(logrus.Fields{"annotation": d.key, "value": k.value})
	}
	l.Warn(d.problem)
}

// maxWarnedPods bounds the pods whose warnings are remembered.
const maxWarnedPods = 65536

// maxValueBytes is how much of an untrusted value (an annotation value) is
// kept and logged.
const maxValueBytes = 64

// boundedValue returns v if it is short, else its first maxValueBytes bytes
// (cut at a character boundary) and its length. The result never shares
// memory with v, so keeping it does not keep a 256 KiB annotation alive.
func boundedValue(v string) string {
	if len(v) <= maxValueBytes {
		return strings.Clone(v)
	}
	cut := maxValueBytes
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return v[:cut] + "... (" + strconv.Itoa(len(v)) + " bytes)"
}

func (p *Plugin) pruneWarned(pods []*api.PodSandbox) {
	live := make(map[string]struct{}, len(pods))
	for _, pod := range pods {
		live[pod.GetUid()] = struct{}{}
	}
	p.warnedMu.Lock()
	defer p.warnedMu.Unlock()
	for uid := range p.warned {
		if _, ok := live[uid]; !ok {
			delete(p.warned, uid)
		}
	}
}

// failureSet remembers the containers already counted as a cgroup miss or
// a refused trace, so that each is counted once, not again at every
// Synchronize. It holds only live containers: StopContainer,
// RemoveContainer and Synchronize forget the others.
type failureSet struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

// first reports whether id was not counted yet, and marks it.
func (f *failureSet) first(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ids[id]; ok {
		return false
	}
	if f.ids == nil {
		f.ids = make(map[string]struct{})
	}
	f.ids[strings.Clone(id)] = struct{}{}
	return true
}

func (f *failureSet) forget(id string) {
	f.mu.Lock()
	delete(f.ids, id)
	f.mu.Unlock()
}

func (f *failureSet) keepOnly(ctrs []*api.Container) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.ids) == 0 {
		return
	}
	live := make(map[string]struct{}, len(ctrs))
	for _, c := range ctrs {
		live[c.GetId()] = struct{}{}
	}
	for id := range f.ids {
		if _, ok := live[id]; !ok {
			delete(f.ids, id)
		}
	}
}

func (p *Plugin) containerLog(pod *api.PodSandbox, ctr *api.Container) logrus.FieldLogger {
	return p.log.WithFields(logrus.Fields{
		"namespace": pod.GetNamespace(), "pod": pod.GetName(), "container": ctr.GetName(), "container_id": ctr.GetId(),
	})
}
