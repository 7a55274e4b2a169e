package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

const (
	defaultMaxTraced = 4096
	defaultDedup     = 65536
	defaultRingBytes = 4 << 20
	// wakeupBytes: the kernel wakes the reader once this much is queued;
	// below it the reader finds events on its poll deadline.
	wakeupBytes = 64 << 10
	// readerPoll bounds how long an event can wait in the ring when fewer
	// than wakeupBytes are queued.
	readerPoll = 5 * time.Millisecond
	// eventSize is sizeof(struct cap_event).
	eventSize = 64
	// filterSlots is FILTER_SLOTS, the size of cgroup_filter_slots.
	filterSlots = 32768
)

// Slot states of cgroup_filter_slots (SLOT_* in captrace.c).
const (
	slotEmpty = iota
	slotOne
	slotShared
)

// filterSlot is struct filter_slot.
type filterSlot struct {
	CgroupID uint64
	Flags    uint32
	State    uint32
}

// Loss counter slots of cap_losses (LOSS_* in captrace.c).
const (
	lossRing = iota
	lossDedup
	lossFilter
	lossSlots = 4
)

// Tracer is the loaded and attached kernel program.
type Tracer struct {
	log    logrus.FieldLogger
	lt     *loadedTier
	reader *ringbuf.Reader
	rec    ringbuf.Record // reused by Read

	maxTraced int
	// noauditCaps are the caps that can have non-audited unique entries
	// (bit n = cap n): all on fexit and kprobe, the walked caps on tp_btf.
	noauditCaps uint64

	mu     sync.Mutex
	closed bool // under mu: Trace and Untrace return ErrClosed
	traced map[uint64]Settings
	slots  map[uint32][]uint64 // traced cgroups per slot of cgroup_filter_slots

	closeOnce sync.Once
}

// Open loads the program, choosing the best attach tier the running kernel accepts.
func Open(opts Options) (*Tracer, error) {
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	removeMemlock(log)
	cfg := loadConfig{
		maxTraced:   uint32(orDefault(opts.MaxTracedCgroups, defaultMaxTraced)),
		dedup:       uint32(orDefault(opts.DedupEntries, defaultDedup)),
		ringBytes:   uint32(orDefault(opts.RingBufferBytes, defaultRingBytes)),
		wakeupBytes: wakeupBytes,
	}
	page := uint32(os.Getpagesize())
	if cfg.ringBytes < page || cfg.ringBytes&(cfg.ringBytes-1) != 0 {
		return nil, fmt.Errorf("tracer.ring_buffer_bytes = %d: must be a power of two and at least the page size (%d)", cfg.ringBytes, page)
	}
	// A small ring must still wake the reader before it fills.
	cfg.wakeupBytes = min(cfg.wakeupBytes, uint64(cfg.ringBytes/4))

	tiers := tierOrder
	if opts.ForceTier != "" {
		if !slices.Contains(tierOrder, opts.ForceTier) {
			return nil, fmt.Errorf("tracer.tier = %q: want \"\" (probe), fexit, tp_btf or kprobe", opts.ForceTier)
		}
		tiers = []Tier{opts.ForceTier}
	}
	var skipped []string
	var lt *loadedTier
	var noauditCaps uint64
	for _, tier := range tiers {
		c := cfg
		if tier == TierTpBTF {
			c.walkCaps, c.ranges = auditConfig(log)
		}
		l, err := loadTier(tier, c)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", tier, err))
			continue
		}
		lt = l
		noauditCaps = ^uint64(0)
		if tier == TierTpBTF {
			noauditCaps = c.walkCaps
		}
		break
	}
	if lt == nil {
		return nil, fmt.Errorf("no capability attach point works on this kernel (tried %s); %s", strings.Join(skipped, "; "), kernelRequirement())
	}
	fields := logrus.Fields{"tier": lt.tier}
	if len(skipped) > 0 {
		fields["skipped"] = strings.Join(skipped, "; ")
	}
	if opts.ForceTier != "" {
		fields["forced"] = true
	}
	log.WithFields(fields).Info("capability tracer attached")

	rd, err := ringbuf.NewReader(lt.maps.Events)
	if err != nil {
		lt.Close()
		return nil, fmt.Errorf("opening the ring buffer reader: %w", err)
	}
	rd.SetDeadline(time.Now().Add(readerPoll))
	return &Tracer{
		log:         log,
		lt:          lt,
		reader:      rd,
		maxTraced:   int(cfg.maxTraced),
		noauditCaps: noauditCaps,
		traced:      map[uint64]Settings{},
		slots:       map[uint32][]uint64{},
	}, nil
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// auditConfig resolves the stack ranges for the tracepoint tier's audit flag.
// Without them every check reads as audited, and audit_only keeps all.
func auditConfig(log logrus.FieldLogger) (uint64, []auditRange) {
	ranges, err := resolveAuditRanges("/proc/kallsyms")
	if err != nil {
		log.WithError(err).Warn("tp_btf tier: cannot tell non-audited checks apart; every check reads audit=true and audit_only drops none (run as root with kernel.kptr_restrict <= 1)")
		return 0, nil
	}
	return walkCapMask(), ranges
}

// Tier is the attach point in use.
func (t *Tracer) Tier() Tier { return t.lt.tier }

func settingsValue(s Settings) uint32 {
	var v uint32
	if s.AuditOnly {
		v |= 1
	}
	if s.Unique {
		v |= 2
	}
	return v
}

// Trace adds cgroupID to the filter map with settings s, or updates its settings.
// When the map is full it returns an error naming the limit and changes nothing.
func (t *Tracer) Trace(cgroupID uint64, s Settings) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	// A new cgroup needs no forgetting: cgroup v2 IDs are not reused on
	// 64-bit kernels (kernfs adds a generation in the high 32 bits), and
	// Untrace forgot this ID's entries if it was traced before.
	if _, known := t.traced[cgroupID]; !known && len(t.traced) >= t.maxTraced {
		return t.fullError(cgroupID)
	}
	if err := t.lt.maps.Filter.Update(cgroupID, settingsValue(s), ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return t.fullError(cgroupID)
		}
		return fmt.Errorf("tracing cgroup %d: %w", cgroupID, err)
	}
	_, known := t.traced[cgroupID]
	t.traced[cgroupID] = s
	slot := uint32(cgroupID % filterSlots)
	if !known {
		t.slots[slot] = append(t.slots[slot], cgroupID)
	}
	// The hash entry exists before the slot names it: the kernel never
	// finds a slot without its hash entry.
	if err := t.writeSlot(slot); err != nil {
		if !known {
			t.dropMember(slot, cgroupID)
			delete(t.traced, cgroupID)
			t.lt.maps.Filter.Delete(cgroupID)
		}
		return fmt.Errorf("tracing cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// writeSlot writes what the kernel needs to know about one slot: empty, the
// one traced cgroup with its settings, or shared (look in the hash).
func (t *Tracer) writeSlot(slot uint32) error {
	v := filterSlot{State: slotEmpty}
	switch members := t.slots[slot]; len(members) {
	case 0:
	case 1:
		v = filterSlot{CgroupID: members[0], Flags: settingsValue(t.traced[members[0]]), State: slotOne}
	default:
		v = filterSlot{State: slotShared}
	}
	if err := t.lt.maps.Slots.Update(slot, v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("updating cgroup_filter_slots: %w", err)
	}
	return nil
}

func (t *Tracer) fullError(cgroupID uint64) error {
	return fmt.Errorf("cannot trace cgroup %d: the filter map is full (%d cgroups traced, the limit); raise tracer.max_containers in the config", cgroupID, t.maxTraced)
}

func (t *Tracer) dropMember(slot uint32, cgroupID uint64) {
	members := slices.DeleteFunc(t.slots[slot], func(id uint64) bool { return id == cgroupID })
	if len(members) == 0 {
		delete(t.slots, slot)
	} else {
		t.slots[slot] = members
	}
}

// Untrace removes cgroupID from the filter map and forgets its unique entries.
func (t *Tracer) Untrace(cgroupID uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	if _, known := t.traced[cgroupID]; known {
		// The slot forgets the cgroup before the hash does.
		slot := uint32(cgroupID % filterSlots)
		t.dropMember(slot, cgroupID)
		if err := t.writeSlot(slot); err != nil {
			t.slots[slot] = append(t.slots[slot], cgroupID)
			return fmt.Errorf("untracing cgroup %d: %w", cgroupID, err)
		}
	}
	err := t.lt.maps.Filter.Delete(cgroupID)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untracing cgroup %d: %w", cgroupID, err)
	}
	delete(t.traced, cgroupID)
	t.forget(cgroupID)
	return nil
}

// dedupKey mirrors struct dedup_key: unique reports once per
// (cgroup, cap, verdict, audit).
type dedupKey struct {
	CgroupID uint64
	Cap      int32
	Capable  uint8
	Audit    uint8
	Pad      uint16
}

// forget deletes cgroupID's unique entries: every (cap, verdict, audit) of
// the caps the kernel knows (0..40), so no iteration over a map the kernel
// keeps changing: 164 keys, 104 on tp_btf, whose non-walked caps are always
// audited. Entries of a cap added after 40 would age out of the LRU.
func (t *Tracer) forget(cgroupID uint64) {
	for c := int32(0); c < int32(len(capNames)); c++ {
		for v := uint8(0); v < 2; v++ {
			for a := uint8(0); a < 2; a++ {
				if a == 0 && t.noauditCaps&(1<<c) == 0 {
					continue
				}
				t.lt.maps.Dedup.Delete(dedupKey{CgroupID: cgroupID, Cap: c, Capable: v, Audit: a})
			}
		}
	}
}

// Read blocks until the next event and decodes it into ev. It returns ErrClosed after Close.
// It is meant for one reading goroutine.
func (t *Tracer) Read(ev *Event) error {
	for {
		err := t.reader.ReadInto(&t.rec)
		if err == nil {
			if len(t.rec.RawSample) < eventSize {
				return fmt.Errorf("ring record of %d bytes, want %d: the BPF object and the decoder disagree (rebuild with make generate)", len(t.rec.RawSample), eventSize)
			}
			decodeEvent(t.rec.RawSample, ev)
			return nil
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The kernel wakes us only for a full batch: look again soon.
			t.reader.SetDeadline(time.Now().Add(readerPoll))
			continue
		}
		if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
			return ErrClosed
		}
		return err
	}
}

func decodeEvent(b []byte, ev *Event) {
	le := binary.LittleEndian
	ev.CgroupID = le.Uint64(b[0:])
	ev.KtimeNs = le.Uint64(b[8:])
	ev.Pid = le.Uint32(b[16:])
	ev.Tid = le.Uint32(b[20:])
	ev.Uid = le.Uint32(b[24:])
	ev.Gid = le.Uint32(b[28:])
	ev.Cap = Capability(int32(le.Uint32(b[32:])))
	ev.Syscall = int32(le.Uint32(b[36:]))
	ev.Capable = b[40] != 0
	ev.Audit = b[41] != 0
	ev.InSetID = b[42] != 0
	ev.InSetIDKnown = b[43] != 0
	copy(ev.Comm[:], b[44:60])
}

// Stats reads the kernel's loss counters and the filter map size.
func (t *Tracer) Stats() (Stats, error) {
	t.mu.Lock()
	st := Stats{Tier: t.lt.tier, Traced: len(t.traced)}
	t.mu.Unlock()
	var perCPU []uint64
	sum := func(slot uint32) (uint64, error) {
		if err := t.lt.maps.Losses.Lookup(slot, &perCPU); err != nil {
			return 0, fmt.Errorf("reading loss counter %d: %w", slot, err)
		}
		var n uint64
		for _, v := range perCPU {
			n += v
		}
		return n, nil
	}
	var err error
	if st.RingLost, err = sum(lossRing); err != nil {
		return st, err
	}
	if st.DedupUpdateFailed, err = sum(lossDedup); err != nil {
		return st, err
	}
	if st.FilterUpdateFailed, err = sum(lossFilter); err != nil {
		return st, err
	}
	return st, nil
}

// Detach stops the kernel program from seeing new checks while the ring
// stays readable: shutdown detaches, reads what is queued, then closes.
func (t *Tracer) Detach() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lt.detach()
}

// Close detaches and unloads everything; Read returns ErrClosed afterwards,
// and Trace and Untrace return ErrClosed rather than touch closed maps.
func (t *Tracer) Close() error {
	var err error
	t.closeOnce.Do(func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.closed = true
		err = errors.Join(t.reader.Close(), t.lt.Close())
	})
	return err
}

var memlockOnce sync.Once

// removeMemlock lifts RLIMIT_MEMLOCK once per process: kernels before 5.11
// count BPF maps against it. It is a no-op where BPF memory is accounted by
// memcg; without CAP_SYS_RESOURCE it fails, and loading says so if a map is
// then refused.
func removeMemlock(log logrus.FieldLogger) {
	memlockOnce.Do(func() {
		if err := rlimit.RemoveMemlock(); err != nil {
			log.WithError(err).Warn("could not lift RLIMIT_MEMLOCK; on kernels before 5.11 BPF maps may be refused (set LimitMEMLOCK=infinity in the unit)")
		}
	})
}
