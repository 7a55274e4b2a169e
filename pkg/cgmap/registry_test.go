package cgmap

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/captrace/captrace/bpf"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// mapFilter stands for the kernel's filter map.
type mapFilter struct {
	mu      sync.Mutex
	m       map[uint64]bpf.Settings
	max     int
	failDel bool
}

func newMapFilter() *mapFilter { return &mapFilter{m: map[uint64]bpf.Settings{}} }

func (f *mapFilter) Trace(id uint64, s bpf.Settings) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.m[id]; !ok && f.max > 0 && len(f.m) >= f.max {
		return errors.New("map full")
	}
	f.m[id] = s
	return nil
}

func (f *mapFilter) Untrace(id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failDel {
		return errors.New("delete failed")
	}
	if _, ok := f.m[id]; !ok {
		return errors.New("not found")
	}
	delete(f.m, id)
	return nil
}

func (f *mapFilter) ids() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []uint64
	for id := range f.m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func quietLog() logrus.FieldLogger {
	l, _ := test.NewNullLogger()
	return l
}

func TestRegistryAddRemoveLookup(t *testing.T) {
	f := newMapFilter()
	r := NewRegistry(f, quietLog())
	a := Container{ID: "a", Name: "app", Namespace: "ns", Pod: "p", PodUID: "u", CgroupID: 10}
	if err := r.Add(a); err != nil {
		t.Fatal(err)
	}
	if got, ok := r.Lookup(10); !ok || got != a {
		t.Fatalf("Lookup(10) = %+v, %v", got, ok)
	}
	if _, ok := r.Lookup(11); ok {
		t.Fatal("Lookup(11) found something")
	}
	// New settings for the same container: one map update, same entry.
	a.Settings = bpf.Settings{Unique: true}
	if err := r.Add(a); err != nil {
		t.Fatal(err)
	}
	if f.m[10] != a.Settings {
		t.Fatalf("filter holds %+v", f.m[10])
	}
	// The container moved to another cgroup: the old one is untraced.
	a.CgroupID = 12
	if err := r.Add(a); err != nil {
		t.Fatal(err)
	}
	if got := f.ids(); fmt.Sprint(got) != "[12]" {
		t.Fatalf("filter holds %v", got)
	}
	if _, ok := r.Lookup(10); ok {
		t.Fatal("Lookup(10) finds the container's old cgroup")
	}
	// Another container takes over the cgroup.
	b := Container{ID: "b", CgroupID: 12}
	if err := r.Add(b); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 1 {
		t.Fatalf("Len = %d", r.Len())
	}
	if got, ok := r.Remove("b"); !ok || got != b {
		t.Fatalf("Remove(b) = %+v, %v", got, ok)
	}
	if _, ok := r.Remove("b"); ok {
		t.Fatal("second Remove found it")
	}
	if r.Len() != 0 || len(f.ids()) != 0 {
		t.Fatalf("left: registry %d, filter %v", r.Len(), f.ids())
	}
}

func TestRegistryAddErrors(t *testing.T) {
	f := newMapFilter()
	f.max = 1
	r := NewRegistry(f, quietLog())
	if err := r.Add(Container{ID: "a"}); err == nil {
		t.Fatal("added a container without cgroup ID")
	}
	if err := r.Add(Container{CgroupID: 1}); err == nil {
		t.Fatal("added a container without ID")
	}
	if err := r.Add(Container{ID: "a", CgroupID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(Container{ID: "b", CgroupID: 2}); err == nil {
		t.Fatal("map full not reported")
	}
	if _, ok := r.Get("b"); ok || r.Len() != 1 {
		t.Fatal("failed Add changed the registry")
	}
	f.failDel = true
	if _, ok := r.Remove("a"); !ok {
		t.Fatal("Remove failed")
	}
	if s := r.Stats(); s.UntraceFailed != 1 || s.Traced != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRegistryReconcile(t *testing.T) {
	f := newMapFilter()
	r := NewRegistry(f, quietLog())
	for i := uint64(1); i <= 3; i++ {
		if err := r.Add(Container{ID: fmt.Sprint("c", i), CgroupID: i}); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := r.Reconcile([]Container{
		{ID: "c2", CgroupID: 2},
		{ID: "c4", CgroupID: 4, Settings: bpf.Settings{AuditOnly: true}},
		{ID: "c5"}, // unresolved: reported, the rest applied
	})
	if err == nil {
		t.Fatal("unresolved container not reported")
	}
	var ids []string
	for _, c := range removed {
		ids = append(ids, c.ID)
	}
	sort.Strings(ids)
	if fmt.Sprint(ids) != "[c1 c3]" {
		t.Fatalf("removed %v", ids)
	}
	if got := f.ids(); fmt.Sprint(got) != "[2 4]" {
		t.Fatalf("filter holds %v", got)
	}
	if err := r.Sync(nil); err != nil || r.Len() != 0 || len(f.ids()) != 0 {
		t.Fatalf("Sync(nil): %v, %d left", err, r.Len())
	}
}

func TestRegistryLookupDoesNotAllocate(t *testing.T) {
	r := NewRegistry(newMapFilter(), quietLog())
	for i := uint64(1); i <= 100; i++ {
		if err := r.Add(Container{ID: fmt.Sprint(i), Name: "n", Namespace: "ns", CgroupID: i}); err != nil {
			t.Fatal(err)
		}
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, ok := r.Lookup(50); !ok {
			t.Fatal("miss")
		}
		r.Lookup(1000)
	})
	if allocs != 0 {
		t.Fatalf("Lookup allocates %v times", allocs)
	}
}

// Run with -race: readers on the event path beside NRI writers.
func TestRegistryConcurrent(t *testing.T) {
	f := newMapFilter()
	r := NewRegistry(f, quietLog())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for id := uint64(1); id < 50; id++ {
					if c, ok := r.Lookup(id); ok && c.CgroupID != id {
						t.Errorf("Lookup(%d) returned cgroup %d", id, c.CgroupID)
					}
				}
			}
		}()
	}
	for i := 0; i < 2000; i++ {
		id := uint64(i%49 + 1)
		_ = r.Add(Container{ID: fmt.Sprint("c", id), CgroupID: id})
		if i%3 == 0 {
			r.Remove(fmt.Sprint("c", id))
		}
		if i%500 == 0 {
			_ = r.Sync(r.List()[:0])
		}
	}
	close(stop)
	wg.Wait()
	_ = r.Sync(nil)
	if len(f.ids()) != 0 {
		t.Fatalf("filter holds %v", f.ids())
	}
}

func BenchmarkLookup(b *testing.B) {
	r := NewRegistry(newMapFilter(), quietLog())
	for i := uint64(1); i <= 4096; i++ {
		_ = r.Add(Container{ID: fmt.Sprint(i), CgroupID: i})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.Lookup(uint64(i&4095) + 1)
	}
}

// recorder is a Listener that records what it is told.
type recorder struct{ log []string }

func (l *recorder) Traced(c Container) {
	l.log = append(l.log, fmt.Sprintf("+%s@%d", c.ID, c.CgroupID))
}
func (l *recorder) Untraced(c Container) {
	l.log = append(l.log, fmt.Sprintf("-%s@%d", c.ID, c.CgroupID))
}

// TestRegistryListenerPairs: every container reported Traced is reported
// Untraced exactly once, whatever ends its tracing: Remove, Reconcile, or
// another container taking over its cgroup (which used to drop the previous
// owner silently: its summary then waited for shutdown). A settings change
// or a move to another cgroup is a new Traced of the same container.
func TestRegistryListenerPairs(t *testing.T) {
	f := newMapFilter()
	r := NewRegistry(f, quietLog())
	l := &recorder{}
	r.Listen(l)
	mustAdd := func(c Container) {
		t.Helper()
		if err := r.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	mustAdd(Container{ID: "a", CgroupID: 10})
	mustAdd(Container{ID: "a", CgroupID: 10})                                       // no change: nothing to tell
	mustAdd(Container{ID: "a", CgroupID: 10, Settings: bpf.Settings{Unique: true}}) // settings
	mustAdd(Container{ID: "b", CgroupID: 10})                                       // b takes a's cgroup
	mustAdd(Container{ID: "c", CgroupID: 20})
	mustAdd(Container{ID: "c", CgroupID: 21}) // c moves
	mustAdd(Container{ID: "d", CgroupID: 30})
	r.Remove("d")
	r.Remove("d")
	if _, err := r.Reconcile([]Container{{ID: "c", CgroupID: 21}}); err != nil {
		t.Fatal(err)
	}
	r.Remove("c")
	want := "[+a@10 +a@10 -a@10 +b@10 +c@20 +c@21 +d@30 -d@30 -b@10 -c@21]"
	if got := fmt.Sprint(l.log); got != want {
		t.Fatalf("listener told %s, want %s", got, want)
	}
	if len(f.ids()) != 0 || r.Len() != 0 {
		t.Fatalf("left: filter %v, registry %d", f.ids(), r.Len())
	}
}

// A filter deletion that fails is counted, and the container still leaves
// the registry and is reported Untraced.
func TestRegistryUntraceFailure(t *testing.T) {
	f := newMapFilter()
	r := NewRegistry(f, quietLog())
	l := &recorder{}
	r.Listen(l)
	if err := r.Add(Container{ID: "a", CgroupID: 10}); err != nil {
		t.Fatal(err)
	}
	f.failDel = true
	if _, ok := r.Remove("a"); !ok {
		t.Fatal("Remove failed")
	}
	if st := r.Stats(); st.UntraceFailed != 1 || st.Traced != 0 {
		t.Fatalf("stats %+v", st)
	}
	if got := fmt.Sprint(l.log); got != "[+a@10 -a@10]" {
		t.Fatalf("listener told %s", got)
	}
}
