package output

import (
	"context"
	"sync"
	"testing"
)

const (
	floodCgroup = 100
	quietCgroup = 200
)

func rec(cgroup uint64, pid uint32) *EnrichedEvent {
	r := &EnrichedEvent{}
	r.Event.CgroupID, r.Event.Pid = cgroup, pid
	return r
}

// A sink that stalls while one container floods still receives every record
// of a quiet container, and every drop is charged to the flooding one.
func TestFanoutQuietContainerSurvivesAFlood(t *testing.T) {
	slow := &gatedSink{name: "slow", gate: make(chan struct{})}
	f := NewFanout([]Sink{slow}, 100, quietLog())
	const flood, quiet = 10000, 40
	for i := range flood {
		f.Send(rec(floodCgroup, 1))
		if i%(flood/quiet) == 0 {
			f.Send(rec(quietCgroup, 2))
		}
	}
	close(slow.gate)
	if err := f.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := map[uint32]int{}
	for _, pid := range slow.written {
		got[pid]++
	}
	drops := f.TakeContainerDrops(floodCgroup)[0]
	quietDrops := f.TakeContainerDrops(quietCgroup)[0]
	t.Logf("flood: %d written, %d dropped; quiet: %d written, %d dropped", got[1], drops, got[2], quietDrops)
	if got[2] != quiet || quietDrops != 0 {
		t.Errorf("quiet container: %d of %d written, %d dropped; want all written", got[2], quiet, quietDrops)
	}
	if uint64(got[1])+drops != flood {
		t.Errorf("flooding container: %d written + %d dropped != %d sent", got[1], drops, flood)
	}
	if st := f.Stats()[0]; st.Dropped != drops || st.Written != uint64(got[1]+got[2]) {
		t.Errorf("sink stats %+v: dropped must equal the drops charged to containers (%d)", st, drops)
	}
	if again := f.TakeContainerDrops(floodCgroup)[0]; again != 0 {
		t.Errorf("drops taken twice: %d", again)
	}
}

// A full queue makes room for a container below its share by pushing out
// the fullest lane's oldest record, charged to that lane.
func TestFairQueuePushesOutTheFullest(t *testing.T) {
	q := newFairQueue(10)
	for i := range 10 {
		if n := q.push(floodCgroup, item{rec: *rec(floodCgroup, uint32(i))}); n != 0 {
			t.Fatalf("push %d dropped %d", i, n)
		}
	}
	// Over its share (all 10): its own new record is dropped.
	if n := q.push(floodCgroup, item{rec: *rec(floodCgroup, 99)}); n != 1 {
		t.Fatalf("flood over its share: dropped %d, want 1", n)
	}
	// A quiet container gets in; the flood's oldest (pid 0) goes.
	if n := q.push(quietCgroup, item{rec: *rec(quietCgroup, 7)}); n != 1 {
		t.Fatalf("quiet push: dropped %d, want 1 pushed out", n)
	}
	if d := q.takeDrops(floodCgroup); d != 2 {
		t.Errorf("flood charged %d drops, want 2", d)
	}
	if d := q.takeDrops(quietCgroup); d != 0 {
		t.Errorf("quiet charged %d drops, want 0", d)
	}
	// Round robin: the quiet record comes second, not after nine flood records.
	out := make([]item, 3)
	if n := q.popBatch(out); n != 3 {
		t.Fatalf("popBatch = %d", n)
	}
	if out[0].rec.Event.Pid != 1 || out[1].rec.Event.Pid != 7 || out[2].rec.Event.Pid != 2 {
		t.Errorf("order %d %d %d, want 1 (flood, oldest left), 7 (quiet), 2 (flood)", out[0].rec.Event.Pid, out[1].rec.Event.Pid, out[2].rec.Event.Pid)
	}
	if q.len() != 7 {
		t.Errorf("len %d, want 7 (10 queued, 3 taken)", q.len())
	}
}

// Many producers and one consumer: nothing is lost or counted twice.
func TestFairQueueConcurrentAccounting(t *testing.T) {
	q := newFairQueue(64)
	const producers, each = 4, 20000
	var dropped sync.Map
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			n := 0
			for range each {
				n += q.push(uint64(p+1), item{})
			}
			dropped.Store(p, n)
		})
	}
	popped := 0
	done := make(chan struct{})
	go func() {
		buf := make([]item, 16)
		for {
			n := q.popBatch(buf)
			if n == 0 {
				close(done)
				return
			}
			popped += n
		}
	}()
	wg.Wait()
	q.close()
	<-done
	var charged uint64
	for p := range producers {
		charged += q.takeDrops(uint64(p + 1))
	}
	// A push can push out another's record: compare totals, not producers.
	var returned int
	dropped.Range(func(_, v any) bool { returned += v.(int); return true })
	if uint64(popped)+charged != producers*each || charged != uint64(returned) {
		t.Errorf("%d popped + %d charged != %d pushed (push reported %d drops)", popped, charged, producers*each, returned)
	}
}
