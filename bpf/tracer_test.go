package bpf

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// niceEvents keeps the CAP_SYS_NICE checks and fails on anything else that
// is not memory accounting.
func niceEvents(t *testing.T, evs []Event) []Event {
	t.Helper()
	var out []Event
	for _, ev := range evs {
		switch {
		case ev.Cap == capSysNice:
			out = append(out, ev)
		case memoryAccounting(ev):
		case ev.Cap == capSetpcap && SyscallName(ev.Syscall) == "SYS_CAPSET": // the test's own capset
		default:
			t.Errorf("unexpected event:%s", describe([]Event{ev}))
		}
	}
	return out
}

func TestSetpriorityVerdict(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)
	traced, untraced := newCgroup(t), newCgroup(t)

	for _, keep := range []bool{false, true} {
		// The program runs preemptibly (fexit, tp_btf): while the untraced
		// child is preempted inside it, the kernel skips the traced child's
		// run on that CPU and counts a recursion miss. Seen in emulated 7.2
		// guests. A check lost that way is counted, not silent: try again.
		for attempt := 1; ; attempt++ {
			missesBefore := recursionMisses(t, tr)
			if setpriorityVerdictOnce(t, tr, col, traced, untraced, keep) {
				break
			}
			missed := recursionMisses(t, tr) - missesBefore
			if missed == 0 || attempt == 3 {
				t.Fatalf("kept=%v: no CAP_SYS_NICE event (attempt %d, %d recursion misses counted)", keep, attempt, missed)
			}
			t.Logf("kept=%v: the check was a counted recursion miss (%d in this attempt): again", keep, missed)
		}
	}
}

// setpriorityVerdictOnce makes one traced and many untraced CAP_SYS_NICE
// checks and asserts the traced one's event; false: no event arrived.
func setpriorityVerdictOnce(t *testing.T, tr *Tracer, col *collector, traced, untraced *testCgroup, keep bool) bool {
	t.Helper()
	c := startChild(t, traced)
	other := startChild(t, untraced)
	defer func() {
		c.stop()
		other.stop()
		col.mu.Lock()
		col.events = nil
		col.mu.Unlock()
	}()
	if !keep {
		if got := c.do("drop"); got != "<nil>" {
			t.Fatalf("drop CAP_SYS_NICE: %s", got)
		}
	}
	other.do("drop")
	if err := tr.Trace(traced.id, Settings{}); err != nil {
		t.Fatal(err)
	}
	// The untraced cgroup checks at the same time.
	done := make(chan string)
	go func() { done <- other.do("nice 1000") }()
	got := c.do("nice 1")
	<-done
	wantErr := map[bool]string{false: "permission denied", true: "<nil>"}[keep]
	if got != wantErr {
		t.Fatalf("setpriority(-5) with CAP_SYS_NICE kept=%v: %s", keep, got)
	}
	if err := tr.Untrace(traced.id); err != nil {
		t.Fatal(err)
	}
	col.waitFor(traced.id, 1, func(ev Event) bool { return ev.Cap == capSysNice })

	evs := niceEvents(t, col.of(traced.id))
	if len(evs) == 0 {
		return false
	}
	if len(evs) != 1 {
		t.Fatalf("kept=%v: want exactly one CAP_SYS_NICE event, got %d:%s", keep, len(evs), describe(evs))
	}
	ev := evs[0]
	if ev.Capable != keep || SyscallName(ev.Syscall) != "SYS_SETPRIORITY" || !ev.Audit ||
		int(ev.Pid) != c.pid || int(ev.Tid) != c.tid || ev.Uid != c.uid || ev.Gid != c.gid ||
		commString(ev.Comm) != c.comm {
		t.Errorf("kept=%v: event%s\nwant capable=%v SYS_SETPRIORITY audit=true pid=%d tid=%d uid=%d gid=%d comm=%s",
			keep, describe(evs), keep, c.pid, c.tid, c.uid, c.gid, c.comm)
	}
	if wall := WallTime(ev.KtimeNs); time.Since(wall) > 10*time.Second || time.Since(wall) < 0 {
		t.Errorf("WallTime(%d) = %v, not within the last seconds", ev.KtimeNs, wall)
	}
	if !ev.InSetIDKnown || ev.InSetID {
		t.Errorf("setpriority: InSetIDKnown=%v InSetID=%v on tier %s, want known and false", ev.InSetIDKnown, ev.InSetID, tr.Tier())
	}
	if evs := col.of(untraced.id); len(evs) != 0 {
		t.Errorf("untraced cgroup produced %d events:%s", len(evs), describe(evs))
	}
	return true
}

func TestUnique(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)
	cg := newCgroup(t)
	c := startChild(t, cg)
	c.do("drop")

	// The other syscall does check CAP_SYS_NICE: see it without unique first.
	if err := tr.Trace(cg.id, Settings{}); err != nil {
		t.Fatal(err)
	}
	c.do("sched")
	col.waitFor(cg.id, 1, func(ev Event) bool { return ev.Cap == capSysNice })
	evs := niceEvents(t, col.of(cg.id))
	if len(evs) != 1 || SyscallName(evs[0].Syscall) != "SYS_SCHED_SETSCHEDULER" || evs[0].Capable {
		t.Fatalf("sched_setscheduler without unique: want one denied CAP_SYS_NICE, got%s", describe(evs))
	}
	if err := tr.Untrace(cg.id); err != nil {
		t.Fatal(err)
	}
	settle()
	col.mu.Lock()
	col.events = nil
	col.mu.Unlock()

	if err := tr.Trace(cg.id, Settings{Unique: true}); err != nil {
		t.Fatal(err)
	}
	c.do("nice 10000") // 10,000 identical denied checks
	c.do("sched")      // same cap and verdict, other syscall
	c.do("raise")
	c.do("nice 1") // the verdict changes
	col.waitFor(cg.id, 2, func(ev Event) bool { return ev.Cap == capSysNice })
	evs = niceEvents(t, col.of(cg.id))
	if len(evs) != 2 ||
		evs[0].Capable || SyscallName(evs[0].Syscall) != "SYS_SETPRIORITY" ||
		!evs[1].Capable || SyscallName(evs[1].Syscall) != "SYS_SETPRIORITY" {
		t.Fatalf("unique: want denied then allowed CAP_SYS_NICE in SYS_SETPRIORITY, got%s", describe(evs))
	}
	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.DedupUpdateFailed != 0 || st.RingLost != 0 {
		t.Errorf("losses: %+v", st)
	}

	// ForgetUnique after Untrace forgets the cgroup's entries (the reader
	// noted the two keyed events): tracing again reports again.
	if err := tr.Untrace(cg.id); err != nil {
		t.Fatal(err)
	}
	if n, err := tr.ForgetUnique(cg.id); err != nil || n < 2 {
		t.Fatalf("ForgetUnique deleted %d keys (%v), want at least the 2 CAP_SYS_NICE ones", n, err)
	}
	if keys := dedupKeysOf(t, tr, cg.id); len(keys) != 0 {
		t.Fatalf("after ForgetUnique, cap_dedup still holds %v", keys)
	}
	if err := tr.Trace(cg.id, Settings{Unique: true}); err != nil {
		t.Fatal(err)
	}
	c.do("renice0") // back to nice 0, so lowering it checks again
	c.do("drop")
	c.do("nice 3")
	col.waitFor(cg.id, 3, func(ev Event) bool { return ev.Cap == capSysNice })
	if evs := niceEvents(t, col.of(cg.id)); len(evs) != 3 {
		t.Fatalf("after Untrace and Trace: want one more event, got%s", describe(evs))
	}
}

// TestUniqueKeepsAudit: unique reports once per (cgroup, cap, verdict,
// audit). A non-audited CAP_SYS_ADMIN probe (seccomp without no_new_privs)
// must not hide the audited CAP_SYS_ADMIN check of unshare that follows: that
// one says the container needs CAP_SYS_ADMIN. With audit_only, only the
// audited one remains. Untrace forgets every key of the cgroup.
func TestUniqueKeepsAudit(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)
	for _, auditOnly := range []bool{false, true} {
		cg := newCgroup(t)
		c := startChild(t, cg)
		if err := tr.Trace(cg.id, Settings{Unique: true, AuditOnly: auditOnly}); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"adminpair 1", "adminpair 1000"} {
			if got := c.do(cmd); got != "<nil>" {
				t.Fatalf("%s: %s", cmd, got)
			}
		}
		want := map[bool]int{false: 2, true: 1}[auditOnly]
		col.waitFor(cg.id, want, func(ev Event) bool { return ev.Cap == capSysAdmin })
		settle()

		var admin []Event
		noaudit, audited := -1, -1
		for _, ev := range col.of(cg.id) {
			if ev.Cap != capSysAdmin {
				continue
			}
			if ev.Audit {
				audited = len(admin)
			} else {
				noaudit = len(admin)
			}
			admin = append(admin, ev)
		}
		if len(admin) != want || audited < 0 || (auditOnly != (noaudit < 0)) {
			t.Fatalf("unique audit_only=%v: want %d CAP_SYS_ADMIN events (one per audit value kept), got%s", auditOnly, want, describe(admin))
		}
		if ev := admin[audited]; !ev.Capable || SyscallName(ev.Syscall) != "SYS_UNSHARE" {
			t.Errorf("audited check: want capable in SYS_UNSHARE:%s", describe([]Event{ev}))
		}
		if noaudit >= 0 {
			ev := admin[noaudit]
			// On tp_btf, memory accounting (mmap, brk) is seen too and may
			// come first; fexit and kprobe on 6.1/6.12 do not see it
			// (cap_capable is inlined there), so theirs is seccomp's.
			if !ev.Capable || (tr.Tier() != TierTpBTF && SyscallName(ev.Syscall) != "SYS_PRCTL") {
				t.Errorf("non-audited check: want capable in SYS_PRCTL on %s:%s", tr.Tier(), describe([]Event{ev}))
			}
			if noaudit > audited {
				t.Errorf("non-audited check reported after the audited one:%s", describe(admin))
			}
			t.Logf("%s: non-audited CAP_SYS_ADMIN first seen in %s", tr.Tier(), SyscallName(ev.Syscall))
		}
		if st, err := tr.Stats(); err != nil || st.DedupUpdateFailed != 0 || st.RingLost != 0 {
			t.Errorf("losses: %+v %v", st, err)
		}

		keys := dedupKeysOf(t, tr, cg.id)
		sysAdmin := func(audit uint8) dedupKey {
			// Runtime: the child was exec'd before its cgroup was traced
			// (as runc init is), so its checks are the runtime set-up's.
			return dedupKey{CgroupId: cg.id, Cap: int32(capSysAdmin), Capable: 1, Audit: audit, Runtime: 1}
		}
		if !keys[sysAdmin(1)] || keys[sysAdmin(0)] == auditOnly {
			t.Errorf("audit_only=%v: cap_dedup keys %v, want the audited CAP_SYS_ADMIN key and the non-audited one iff not audit_only", auditOnly, keys)
		}
		c.stop()
		if err := tr.Untrace(cg.id); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.ForgetUnique(cg.id); err != nil {
			t.Fatal(err)
		}
		if keys := dedupKeysOf(t, tr, cg.id); len(keys) != 0 {
			t.Errorf("after Untrace and ForgetUnique, cap_dedup still holds %v", keys)
		}
	}
}

// TestForgetUniqueDeletesReportedKeys: ForgetUnique deletes every key the
// reader saw the kernel add for a cgroup (up to caps 0..40 × verdict × audit),
// in batches that skip keys the LRU evicted, and leaves other cgroups' keys.
// Untrace of a cgroup that never used unique touches no key.
func TestForgetUniqueDeletesReportedKeys(t *testing.T) {
	tr := openTracer(t, Options{})
	const id, other = 1 << 41, 1<<41 + 1
	if err := tr.Trace(id, Settings{Unique: true}); err != nil {
		t.Fatal(err)
	}
	put := func(k dedupKey) {
		if err := tr.lt.maps.Dedup.Put(k, uint8(1)); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for c := int32(0); c < int32(len(capNames)); c++ {
		for v := uint8(0); v < 2; v++ {
			for a := uint8(0); a < 2; a++ {
				k := dedupKey{CgroupId: id, Cap: c, Capable: v, Audit: a}
				ev := Event{CgroupID: id, Cap: Capability(c), Capable: v == 1, Audit: a == 1}
				tr.noteKey(&ev) // as Read does for a keyed event
				tr.noteKey(&ev) // again, after an LRU eviction: still one key
				if c%7 == 3 && v == 0 {
					continue // reported, then evicted by the LRU
				}
				put(k)
				n++
			}
		}
	}
	put(dedupKey{CgroupId: other, Cap: int32(capSysAdmin), Capable: 1, Audit: 0})
	if got := len(dedupKeysOf(t, tr, id)); got != n {
		t.Fatalf("put %d keys, map holds %d", n, got)
	}
	if err := tr.Untrace(id); err != nil {
		t.Fatal(err)
	}
	if got := len(dedupKeysOf(t, tr, id)); got != n {
		t.Fatalf("Untrace touched unique keys: %d left of %d", got, n)
	}
	start := time.Now()
	deleted, err := tr.ForgetUnique(id, other+1)
	if err != nil || deleted != n {
		t.Fatalf("ForgetUnique deleted %d of %d keys: %v", deleted, n, err)
	}
	t.Logf("%s: ForgetUnique deleted %d unique keys in %v", tr.Tier(), n, time.Since(start))
	if keys := dedupKeysOf(t, tr, id); len(keys) != 0 {
		t.Errorf("after ForgetUnique, cap_dedup still holds %v", keys)
	}
	if len(dedupKeysOf(t, tr, other)) != 1 {
		t.Errorf("ForgetUnique of %d deleted another cgroup's key", uint64(id))
	}
	if n, err := tr.ForgetUnique(id); n != 0 || err != nil {
		t.Errorf("second ForgetUnique: %d, %v", n, err)
	}
}

// dedupKeysOf lists the unique map's keys of one cgroup.
func dedupKeysOf(t *testing.T, tr *Tracer, cgroupID uint64) map[dedupKey]bool {
	t.Helper()
	keys := map[dedupKey]bool{}
	var k dedupKey
	var v uint8
	it := tr.lt.maps.Dedup.Iterate()
	for it.Next(&k, &v) {
		if k.CgroupId == cgroupID {
			keys[k] = true
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestAuditOnly(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)

	run := func(auditOnly bool) []Event {
		cg := newCgroup(t)
		// Traced from exec on: memory accounting during exec and mmap shows.
		if err := tr.Trace(cg.id, Settings{AuditOnly: auditOnly}); err != nil {
			t.Fatal(err)
		}
		c := startChild(t, cg)
		if got := c.do("seccomp"); got != "<nil>" {
			t.Fatalf("seccomp: %s", got)
		}
		c.do("drop")
		c.do("nice 1")
		c.stop()
		col.waitFor(cg.id, 1, func(ev Event) bool { return ev.Cap == capSysNice })
		return col.of(cg.id)
	}

	all := run(false)
	var seccomp, memory, nice int
	for _, ev := range all {
		name := SyscallName(ev.Syscall)
		switch {
		case ev.Cap == capSysAdmin && name == "SYS_PRCTL":
			// seccomp_prepare_filter's ns_capable_noaudit, then the BPF JIT's own noaudit checks.
			seccomp++
			if ev.Audit {
				t.Errorf("seccomp's non-audited check reads audit=true:%s", describe([]Event{ev}))
			}
		case ev.Cap == capSysAdmin && !ev.Audit && name != "SYS_PRCTL":
			memory++
		case ev.Cap == capSysNice:
			nice++
			if !ev.Audit {
				t.Errorf("setpriority's capable() check reads audit=false")
			}
		}
	}
	if seccomp == 0 || nice != 1 {
		t.Fatalf("audit_only=false: want the seccomp and setpriority checks, got%s", describe(all))
	}
	// On 6.1/6.12 cap_vm_enough_memory inlines cap_capable: fexit and kprobe can't see it.
	if tr.Tier() == TierTpBTF && memory == 0 {
		t.Errorf("tp_btf: no non-audited memory-accounting CAP_SYS_ADMIN check seen during exec:%s", describe(all))
	}
	t.Logf("audit_only=false: %d events, %d memory accounting (non-audited)", len(all), memory)

	kept := run(true)
	nice = 0
	for _, ev := range kept {
		if !ev.Audit {
			t.Errorf("audit_only kept a non-audited check:%s", describe([]Event{ev}))
		}
		if ev.Cap == capSysNice && ev.Audit && SyscallName(ev.Syscall) == "SYS_SETPRIORITY" {
			nice++
		}
		if ev.Cap == capSysAdmin && SyscallName(ev.Syscall) == "SYS_PRCTL" {
			t.Errorf("audit_only kept seccomp's non-audited check:%s", describe([]Event{ev}))
		}
	}
	if nice != 1 {
		t.Errorf("audit_only dropped the audited setpriority check:%s", describe(kept))
	}
}

func TestUntraceStopsAtOnce(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)
	cg := newCgroup(t)
	c := startChild(t, cg)
	c.do("drop")
	if err := tr.Trace(cg.id, Settings{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan string)
	go func() { done <- c.do("nicefor 3000") }()
	// Untrace once 10 checks arrived (an emulated guest on a busy host makes
	// a few dozen a second), while the child goes on checking for 3 s.
	for nice := 0; nice < 10; time.Sleep(readerPoll) {
		nice = 0
		for _, ev := range col.of(cg.id) {
			if ev.Cap == capSysNice {
				nice++
			}
		}
		select {
		case <-done:
			t.Fatalf("the child's 3 s of checks ended before 10 arrived (%d)", nice)
		default:
		}
	}
	if err := tr.Untrace(cg.id); err != nil {
		t.Fatal(err)
	}
	untraced := boottimeNs()
	// Events already in the ring arrive within a poll; the child goes on
	// checking until its 3 s are up, and none of that may show.
	col.quiet(cg.id)
	atUntrace := len(col.of(cg.id))
	<-done
	col.quiet(cg.id)
	all := col.of(cg.id)
	var before, after int
	for _, ev := range all {
		if ev.KtimeNs > untraced {
			after++
		} else if ev.Cap == capSysNice {
			before++
		}
	}
	if before < 10 || after != 0 || len(all) != atUntrace {
		t.Fatalf("want events before Untrace and none after: %d before, %d stamped after, %d arrived after",
			before, after, len(all)-atUntrace)
	}
}

func TestFilterFull(t *testing.T) {
	tr := openTracer(t, Options{MaxTracedCgroups: 2})
	for id := uint64(1000); id < 1002; id++ {
		if err := tr.Trace(id, Settings{}); err != nil {
			t.Fatal(err)
		}
	}
	err := tr.Trace(1002, Settings{})
	if !errors.Is(err, ErrFilterFull) || !strings.Contains(err.Error(), "2 cgroups") {
		t.Fatalf("Trace beyond the limit: %v", err)
	}
	var v uint32
	if err := tr.lt.maps.Filter.Lookup(uint64(1002), &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("refused cgroup is in the filter map: %v", err)
	}
	// Updating a traced cgroup's settings still works when full.
	if err := tr.Trace(1001, Settings{Unique: true}); err != nil {
		t.Errorf("updating settings when full: %v", err)
	}
	if st, _ := tr.Stats(); st.Traced != 2 {
		t.Errorf("Traced = %d, want 2", st.Traced)
	}
}

func TestRingOverflowCounted(t *testing.T) {
	// One page of ring holds a few dozen events; nobody reads during the flood.
	tr := openTracer(t, Options{RingBufferBytes: 4096})
	cg := newCgroup(t)
	c := startChild(t, cg)
	c.do("drop")
	// audit_only keeps stray memory-accounting checks out of the count.
	if err := tr.Trace(cg.id, Settings{AuditOnly: true}); err != nil {
		t.Fatal(err)
	}
	const checks = 10000
	c.do("nice 10000")
	if err := tr.Untrace(cg.id); err != nil {
		t.Fatal(err)
	}
	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	var perCPU []uint64
	if err := tr.lt.maps.Losses.Lookup(uint32(lossRing), &perCPU); err != nil {
		t.Fatal(err)
	}
	var kernel uint64
	for _, v := range perCPU {
		kernel += v
	}
	read := 0
	tr.reader.SetDeadline(time.Now().Add(50 * time.Millisecond))
	var ev Event
	readOne := func() {
		if err := tr.Read(&ev); err != nil {
			t.Fatal(err)
		}
		if ev.CgroupID == cg.id && ev.Cap == capSysNice {
			read++
		}
	}
	// The ring holds 56 events: read 41 of them counting allocations.
	if allocs := testing.AllocsPerRun(40, readOne); allocs != 0 {
		t.Errorf("Read allocates %v times per event", allocs)
	}
	for tr.reader.AvailableBytes() > 0 {
		readOne()
	}
	t.Logf("%d checks: %d delivered, %d lost (kernel count %d)", checks, read, st.RingLost, kernel)
	if st.RingLost != kernel || st.RingLost == 0 || uint64(read)+st.RingLost != checks {
		t.Fatalf("Stats().RingLost=%d, kernel=%d, delivered=%d: want lost = kernel > 0 and delivered+lost = %d", st.RingLost, kernel, read, checks)
	}
}

func TestCloseUnloadsEverything(t *testing.T) {
	tr := openTracer(t, Options{})
	ids := tr.lt.programIDs()
	if len(ids) == 0 {
		t.Fatal("no program IDs")
	}
	var mapIDs []ebpf.MapID
	for _, m := range []*ebpf.Map{tr.lt.maps.Filter, tr.lt.maps.Slots, tr.lt.maps.Dedup, tr.lt.maps.Events, tr.lt.maps.Losses} {
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		mapIDs = append(mapIDs, id)
	}
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			t.Fatalf("program %d not loaded while open: %v", id, err)
		}
		info, _ := p.Info()
		p.Close()
		if !strings.HasPrefix(info.Name, "captrace_") {
			t.Errorf("program %d is named %q, want captrace_*", id, info.Name)
		}
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	var ev Event
	if err := tr.Read(&ev); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	// A late NRI handler must not reach closed maps.
	if err := tr.Trace(1, Settings{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Trace after Close: %v", err)
	}
	if err := tr.Untrace(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Untrace after Close: %v", err)
	}
	// The kernel frees a detached program after a workqueue run and an RCU grace period.
	for _, id := range ids {
		waitGone(t, fmt.Sprintf("program %d", id), func() (io.Closer, error) { return ebpf.NewProgramFromID(id) })
	}
	for _, id := range mapIDs {
		waitGone(t, fmt.Sprintf("map %d", id), func() (io.Closer, error) { return ebpf.NewMapFromID(id) })
	}
	// Any other captrace program belongs to another process (a daemon, a parallel test).
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			if info, err := p.Info(); err == nil && strings.HasPrefix(info.Name, "captrace_") {
				t.Logf("program %d %s loaded by another process", id, info.Name)
			}
			p.Close()
		}
	}
}

// waitGone waits up to 2 s until open reports that the kernel object no
// longer exists; any other error fails the test rather than passing as "gone".
func waitGone(t *testing.T, what string, open func() (io.Closer, error)) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		obj, err := open()
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err != nil {
			t.Fatalf("looking up %s after Close: %v", what, err)
		}
		obj.Close()
		if time.Now().After(deadline) {
			t.Errorf("%s still exists 2 s after Close", what)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestProbeAndNames(t *testing.T) {
	tr := openTracer(t, Options{})
	chosen := tr.Tier()
	tr.Close()
	var ok bool
	for _, p := range Probe() {
		t.Logf("probe %s: %v", p.Tier, p.Err)
		if p.Tier == chosen && p.Err == nil {
			ok = true
		}
		if p.Err != nil {
			// A refused tier, forced: one error naming the tier and the kernel requirement.
			_, err := Open(Options{ForceTier: p.Tier})
			if err == nil || !strings.Contains(err.Error(), string(p.Tier)+": ") || !strings.Contains(err.Error(), "kernel with BTF") {
				t.Errorf("Open forcing refused tier %s: %v", p.Tier, err)
			}
		}
	}
	if !ok {
		t.Errorf("Probe does not report the chosen tier %s as working", chosen)
	}
	if _, err := Open(Options{ForceTier: "bogus"}); !errors.As(err, new(*OptionError)) {
		t.Errorf("Open with an unknown tier: %v", err)
	}
}

// TestIgGuide replays the seed's ig guide as plain processes in a cgroup:
// the checks counted with cred == real_cred are exactly the seed's table.
func TestIgGuide(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)
	cg := newCgroup(t)
	file, mnt := igGuideTargets(t)
	c := startChild(t, cg)
	if got := c.do("privatemounts"); got != "<nil>" {
		t.Fatalf("private mount namespace: %s", got)
	}
	if err := tr.Trace(cg.id, Settings{}); err != nil {
		t.Fatal(err)
	}
	type check struct {
		cap     Capability
		syscall string
	}
	steps := []struct {
		cmd  string
		want map[check]int
	}{
		{"chown " + file, map[check]int{{0, igGuideSyscalls["chown"]}: 2}},
		// setattr_prepare and setattr_copy each ask CAP_FSETID; in a container the
		// second runs under overlayfs's mounter creds and is skipped (seed: ×1).
		{"chmod " + file, map[check]int{{3, igGuideSyscalls["chmod"]}: 1, {4, igGuideSyscalls["chmod"]}: 2}},
		{"chroot /", map[check]int{{18, "SYS_CHROOT"}: 1}},
		{"mount " + mnt, map[check]int{{capSysAdmin, "SYS_MOUNT"}: 2}},
		{"unshare", map[check]int{{capSysAdmin, "SYS_UNSHARE"}: 1}},
		{"setns", map[check]int{{capSysAdmin, "SYS_SETNS"}: 2}},
	}
	for _, step := range steps {
		col.mu.Lock()
		col.events = nil
		col.mu.Unlock()
		if got := c.do(step.cmd); got != "<nil>" {
			t.Fatalf("%s: %s", step.cmd, got)
		}
		n := 0
		for _, k := range step.want {
			n += k
		}
		col.waitFor(cg.id, n, func(ev Event) bool { return !memoryAccounting(ev) })
		got := map[check]int{}
		var evs []Event
		for _, ev := range col.of(cg.id) {
			if memoryAccounting(ev) {
				continue
			}
			evs = append(evs, ev)
			got[check{ev.Cap, SyscallName(ev.Syscall)}]++
			if !ev.Capable || !ev.Audit || int(ev.Pid) != c.pid {
				t.Errorf("%s: want capable, audited checks of pid %d:%s", step.cmd, c.pid, describe([]Event{ev}))
			}
		}
		if !maps.Equal(got, step.want) {
			t.Errorf("%s: got%s\nwant %v", strings.Fields(step.cmd)[0], describe(evs), step.want)
		}
	}
	c.stop()
	syscall.Unmount(mnt, syscall.MNT_DETACH) // only mounted in the child's namespace; harmless
}

// TestInSetID: set*id syscalls check CAP_SETUID through ns_capable_setid
// (CAP_OPT_INSETID); every tier reports it, tp_btf from the stack.
func TestInSetID(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)
	cg := newCgroup(t)
	c := startChild(t, cg)
	if err := tr.Trace(cg.id, Settings{}); err != nil {
		t.Fatal(err)
	}
	if got := c.do("setsuid 1000"); got != "errno 0" {
		t.Fatalf("setresuid: %s", got)
	}
	// Setting the saved uid to 1000 is a change (one check); back to 0, it
	// equals the real uid and is not.
	col.waitFor(cg.id, 1, func(ev Event) bool { return ev.Cap == capSetuid })
	var setuid []Event
	for _, ev := range col.of(cg.id) {
		if ev.Cap == capSetuid {
			setuid = append(setuid, ev)
		}
	}
	if len(setuid) != 1 {
		t.Fatalf("want one CAP_SETUID check, got%s", describe(col.of(cg.id)))
	}
	for _, ev := range setuid {
		if !ev.InSetID || !ev.InSetIDKnown || !ev.Audit || !ev.Capable || SyscallName(ev.Syscall) != "SYS_SETRESUID" {
			t.Errorf("want capable, audited, in setid, SYS_SETRESUID: insetid=%v known=%v%s", ev.InSetID, ev.InSetIDKnown, describe([]Event{ev}))
		}
	}
}

// TestFilterSlotsShared: the filter's direct-mapped first stage. A slot
// names its one traced cgroup (with settings) or defers to the hash when
// shared; checks of a cgroup on a shared slot still arrive.
func TestFilterSlotsShared(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)
	cg := newCgroup(t)
	other := cg.id + filterSlots // same slot, not a real cgroup
	slot := uint32(cg.id % filterSlots)
	want := func(state captraceSlotState, id uint64, s Settings) {
		t.Helper()
		var v filterSlot
		if err := tr.lt.maps.Slots.Lookup(slot, &v); err != nil {
			t.Fatal(err)
		}
		if v.State != state || (state == slotOne && (v.CgroupId != id || v.Flags&0xff != settingsValue(s, 0))) {
			t.Fatalf("slot %+v, want state %d cgroup %d settings %+v", v, state, id, s)
		}
	}
	trace := func(id uint64, s Settings) {
		t.Helper()
		if err := tr.Trace(id, s); err != nil {
			t.Fatal(err)
		}
	}
	untrace := func(id uint64) {
		t.Helper()
		if err := tr.Untrace(id); err != nil {
			t.Fatal(err)
		}
	}
	trace(other, Settings{})
	want(slotOne, other, Settings{})
	trace(other, Settings{Unique: true}) // a settings change reaches the slot
	want(slotOne, other, Settings{Unique: true})
	trace(cg.id, Settings{})
	want(slotShared, 0, Settings{})

	c := startChild(t, cg)
	c.do("drop")
	c.do("nice 1")
	col.waitFor(cg.id, 1, func(ev Event) bool { return ev.Cap == capSysNice })
	if evs := niceEvents(t, col.of(cg.id)); len(evs) != 1 {
		t.Fatalf("cgroup on a shared slot: want one CAP_SYS_NICE event, got%s", describe(evs))
	}

	// A reader racing a ONE <-> SHARED rewrite can see the slot name another
	// cgroup while ours is traced: the hash still decides, nothing is lost.
	torn := filterSlot{CgroupId: other, State: slotOne}
	if err := tr.lt.maps.Slots.Update(slot, torn, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	c.do("nice 1")
	col.waitFor(cg.id, 2, func(ev Event) bool { return ev.Cap == capSysNice })
	if evs := niceEvents(t, col.of(cg.id)); len(evs) != 2 {
		t.Fatalf("slot naming another cgroup: want the traced cgroup's second CAP_SYS_NICE event, got%s", describe(evs))
	}
	if err := tr.writeSlot(slot); err != nil {
		t.Fatal(err)
	}

	untrace(other)
	want(slotOne, cg.id, Settings{})
	untrace(cg.id)
	want(slotEmpty, 0, Settings{})
	untrace(cg.id) // untracing twice is harmless
}

// A kernel where no tier loads: Open fails with one error that lists every
// tier tried with its reason and names the kernel requirement, and leaves no
// program behind (never half-attached). The tiers this kernel refuses stand
// in for such a kernel: fexit and kprobe on the 6.18 host, tp_btf in the 6.1
// and 6.12 guests.
func TestNoTierLoads(t *testing.T) {
	openTracer(t, Options{}).Close() // root, and a kernel that loads captrace at all
	var refused []Tier
	for _, p := range Probe() {
		if p.Err != nil {
			refused = append(refused, p.Tier)
		}
	}
	if len(refused) == 0 {
		t.Skip("this kernel loads every tier; no refused tier to stand in for a kernel without any")
	}
	saved := tierOrder
	tierOrder = refused
	defer func() { tierOrder = saved }()

	before := loadedCaptracePrograms(t)
	tr, err := Open(Options{})
	if err == nil {
		tr.Close()
		t.Fatalf("Open succeeded with only refused tiers %v", refused)
	}
	msg := err.Error()
	for _, tier := range refused {
		if !strings.Contains(msg, string(tier)+": ") {
			t.Errorf("error does not give tier %s its reason: %s", tier, msg)
		}
	}
	if !strings.Contains(msg, "no capability attach point works on this kernel") || !strings.Contains(msg, "kernel with BTF") {
		t.Errorf("error does not name the kernel requirement: %s", msg)
	}
	// The kernel frees closed programs lazily, so the tracer closed above may
	// still be counted before; a failed Open must add none.
	if after := loadedCaptracePrograms(t); after > before {
		t.Errorf("%d captrace programs loaded before the failed Open, %d after", before, after)
	}
}

// loadedCaptracePrograms counts the loaded programs named captrace_*.
func loadedCaptracePrograms(t *testing.T) int {
	t.Helper()
	n := 0
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return n
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if info, err := p.Info(); err == nil && strings.HasPrefix(info.Name, "captrace_") {
			n++
		}
		p.Close()
	}
}

// TestBarrierOrdersUntrace: the checks a cgroup made before its Untrace are
// all read before the ErrFlushed that follows Barrier, with no sleep.
func TestBarrierOrdersUntrace(t *testing.T) {
	tr := openTracer(t, Options{})
	t.Cleanup(func() { tr.Close() })
	cg := newCgroup(t)
	c := startChild(t, cg)
	c.do("drop") // every setpriority to -5 checks CAP_SYS_NICE, denied
	for round := range 20 {
		if err := tr.Trace(cg.id, Settings{}); err != nil {
			t.Fatal(err)
		}
		c.do("nice 50")
		if err := tr.Untrace(cg.id); err != nil {
			t.Fatal(err)
		}
		if err := tr.Barrier(); err != nil {
			t.Fatal(err)
		}
		got := 0
		for {
			var ev Event
			err := tr.Read(&ev)
			if errors.Is(err, ErrFlushed) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if ev.CgroupID == cg.id && ev.Cap == capSysNice {
				got++
			}
		}
		if got != 50 {
			t.Fatalf("round %d: %d of 50 checks read before the barrier's ErrFlushed", round, got)
		}
	}
}

// TestUntraceMapOps: untracing a cgroup costs the handler at most three map
// operations (its slot and its hash entry), unique or not; a cgroup sharing
// its slot with another costs the same.
func TestUntraceMapOps(t *testing.T) {
	tr := openTracer(t, Options{})
	t.Cleanup(func() { tr.Close() })
	const id = 1 << 42
	for _, s := range []Settings{{}, {Unique: true}, {AuditOnly: true}} {
		for _, shared := range []bool{false, true} {
			if shared {
				if err := tr.Trace(id+filterSlots, s); err != nil {
					t.Fatal(err)
				}
			}
			if err := tr.Trace(id, s); err != nil {
				t.Fatal(err)
			}
			before := tr.filterOps.Load()
			if err := tr.Untrace(id); err != nil {
				t.Fatal(err)
			}
			if n := tr.filterOps.Load() - before; n > 3 {
				t.Errorf("settings %+v, shared slot %v: Untrace made %d map operations, want <= 3", s, shared, n)
			}
			if shared {
				if err := tr.Untrace(id + filterSlots); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// TestStaleFilterEntryRetried: a filter entry whose delete failed (simulated:
// left in the kernel map and marked stale) counts against MaxTracedCgroups
// and is deleted at the next Trace or Untrace, so the limit does not shrink.
func TestStaleFilterEntryRetried(t *testing.T) {
	tr := openTracer(t, Options{MaxTracedCgroups: 2})
	t.Cleanup(func() { tr.Close() })
	const stale, a, b = 1 << 43, 1<<43 + 1, 1<<43 + 2
	if err := tr.lt.maps.Filter.Update(uint64(stale), captraceSettings{}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	tr.stale[stale] = struct{}{}
	tr.mu.Unlock()
	if st, _ := tr.Stats(); st.StaleFilterEntries != 1 {
		t.Fatalf("stats %+v", st)
	}
	for _, id := range []uint64{a, b} { // both fit: the retry freed the stale entry
		if err := tr.Trace(id, Settings{}); err != nil {
			t.Fatal(err)
		}
	}
	var s captraceSettings
	if err := tr.lt.maps.Filter.Lookup(uint64(stale), &s); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("stale entry still in the filter map: %v", err)
	}
	if st, _ := tr.Stats(); st.StaleFilterEntries != 0 || st.Traced != 2 {
		t.Errorf("stats %+v", st)
	}
}
