// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// captrace: report the capability checks (cap_capable) of traced cgroups.
//
// Three attach points share one core (report_check):
//   fexit/cap_capable            opts and return value in one program
//   tp_btf/cap_capable           return value, no opts: audit from the caller's stack
//   kprobe+kretprobe cap_capable entry saves the arguments, return reports
// User space loads exactly one of them, each in its own collection, with the
// two task-marking programs (tp_btf/sched_process_exec, tp_btf/task_newtask)
// that tell a container's workload from its runtime's set-up (task_workload).
//
// Every program starts with the cgroup filter (traced()); a check from a
// cgroup that is not traced costs that and nothing else.

//go:build ignore

#include "vmlinux.h"
#include "bpf_helpers.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define CAP_OPT_NOAUDIT (1U << 1)
#define CAP_OPT_INSETID (1U << 2)

// The constants Go shares are enums, not #defines: bpf2go -type generates
// them from the object's BTF (an enum is in BTF only when a type or variable
// uses it; each of these is a member type below or anchored at the end).

// Settings flags (value of cgroup_filter, flags of a filter slot).
enum setting_flag {
	SETTING_AUDIT_ONLY = 1U << 0,
	SETTING_UNIQUE = 1U << 1,
	// The container was already running when it was traced (NRI
	// Synchronize after captrace (re)started): its tasks were exec'd
	// before the filter held the cgroup, so no task of it is known to be
	// the workload. Its checks are never classified as runtime set-up
	// (fail towards showing, never hiding).
	SETTING_ADOPTED = 1U << 2,
	SETTING_KSTACK = 1U << 4, // kernel stack in the event (issue 13)
	SETTING_USTACK = 1U << 5, // user stack in the event (issue 13)
	// The bits from here up hold the container's index in container_states
	// (0: none), so finding a container's limiter and loss counters costs
	// an array lookup the verifier inlines, not a second hash lookup.
	SETTING_STATE_SHIFT = 8,
};

// Loss counter slots (cap_losses).
enum loss_slot {
	LOSS_RING = 0,
	LOSS_DEDUP = 1,
	LOSS_FILTER = 2,
	LOSS_RATE = 3,   // over a container's rate limit, dropped before the ring
	LOSS_KSTACK = 4, // kernel stack asked for, walk failed (event still sent)
	LOSS_USTACK = 5, // user stack asked for, walk failed (event still sent)
	LOSS_MARK = 6,   // a task exec'd in (or created by) the workload could not be marked
	LOSS_SLOTS = 8,
};

// Stack matching for the audit flag on the tracepoint tier.
#define AUDIT_FRAMES 8
#define AUDIT_RANGES 16

// What a [start, end) range of kernel text is, for the stack walk.
enum caller_kind {
	KIND_NONE = 0,
	KIND_SECURITY_CAPABLE = 1, // security_capable
	KIND_CAP_CAPABLE = 2,      // cap_capable
	KIND_NOAUDIT_WRAPPER = 3,  // a caller of security_capable that passes CAP_OPT_NOAUDIT
	KIND_VM_ENOUGH = 4,        // a caller of cap_capable that passes CAP_OPT_NOAUDIT
	KIND_TRANSPARENT = 5,      // an out-of-line helper between the two (ns_capable_common)
	KIND_SETID_WRAPPER = 6,    // a caller of security_capable that passes CAP_OPT_INSETID
};

// What the stack says about a check's opts.
#define STACK_AUDIT 0
#define STACK_NOAUDIT 1
#define STACK_INSETID 2

struct settings {
	__u32 flags; // enum setting_flag bits
};

// unique remembers a check per (cgroup, cap, verdict, audit): a non-audited
// probe (memory accounting, seccomp) must not hide a later audited check of
// the same cap and verdict (mount, unshare), the one an operator acts on.
// runtime is in the key so that runc's set-up check never hides the same
// check made by the workload later.
struct dedup_key {
	__u64 cgroup_id;
	__s32 cap;
	__u8 capable;
	__u8 audit;
	__u8 runtime;
	__u8 pad;
};

struct pending_check {
	__u64 cred;
	__s32 cap;
	__u32 opts;
};

struct audit_range {
	__u64 start;
	__u64 end;
	enum caller_kind kind;
	__u32 pad;
};

// One event (64 bytes); Go decodes it through bpf2go's generated type.
struct cap_event {
	__u64 cgroup_id;
	__u64 ktime_ns;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__s32 cap;
	__s32 syscall;
	__u8 capable;
	__u8 audit;
	__u8 insetid;
	__u8 insetid_known;
	char comm[16];
	// keyed: this check added its dedup_key to cap_dedup (unique mode), so
	// user space knows the exact keys to delete when the cgroup goes.
	__u8 keyed;
	// runtime: the task was not exec'd inside a traced cgroup, nor created
	// by a task that was (task_workload): the container runtime's set-up
	// (runc init before it execs the entrypoint, a runc exec session before
	// it execs the command). Always 0 in an adopted container.
	__u8 runtime;
	__u8 pad[2];
};

// Stacks (issue 13). A cgroup with stacks on gets a longer record: the event,
// then the stacks, copied into the ring record by bpf_get_stack (no stack
// map: see bpf/README.md for the measurement). A cgroup with stacks off gets
// the plain 64-byte cap_event, so the reader tells them apart by length.
#define STACK_DEPTH_MAX 32
struct stack_head {
	__s32 kstack_bytes; // bytes of kstack written; 0: not asked; < 0: the walk's errno
	__s32 ustack_bytes; // same for ustack
};

struct cap_event_kstack {
	struct cap_event ev;
	struct stack_head head;
	__u64 kstack[STACK_DEPTH_MAX]; // innermost first
};

// The main executable of the task: frames the kernel could not give a
// build ID for (Go's linker leaves its GNU build-ID note outside PT_NOTE)
// resolve through the file with this device and inode, whose text is
// mapped at start_code.
struct exe_id {
	__u64 ino;
	__u32 dev;  // kernel encoding: major << 20 | minor
	__u32 ppid; // the parent's tgid: often alive (the container's shell), its root is the container's
	__u64 start_code;
	__u64 end_code;
};

struct cap_event_stacks {
	struct cap_event ev;
	struct stack_head head;
	__u64 kstack[STACK_DEPTH_MAX];
	struct bpf_stack_build_id ustack[STACK_DEPTH_MAX]; // build ID + file offset, or the bare IP
	struct exe_id exe;
};

// max_entries of the hash maps and the ring are set by user space before load.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct settings);
} cgroup_filter SEC(".maps");

// The filter's first stage, direct-mapped by cgroup ID mod FILTER_SLOTS: an
// array lookup the verifier inlines. A slot holding one traced cgroup gives
// its settings without a hash lookup (~50-80 ns here); an empty slot rejects
// an untraced cgroup as cheaply; a slot shared by several traced cgroups
// defers to cgroup_filter, which always holds every traced cgroup.
#define FILTER_SLOTS 32768
enum slot_state {
	SLOT_EMPTY = 0,
	SLOT_ONE = 1,
	SLOT_SHARED = 2,
};
struct filter_slot {
	__u64 cgroup_id;
	__u32 flags; // enum setting_flag bits
	enum slot_state state;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FILTER_SLOTS);
	__type(key, __u32);
	__type(value, struct filter_slot);
} cgroup_filter_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dedup_key);
	__type(value, __u8);
} cap_dedup SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} cap_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOSS_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} cap_losses SEC(".maps");

// kprobe tier: the arguments of a cap_capable call in flight, per task.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct pending_check);
} cap_pending SEC(".maps");

// Per task: set (1) when the task's image was exec'd while it was in a traced
// cgroup, or when it was created by such a task (fork, threads, io_uring
// workers). runc's
// set-up processes (runc init, runc:[1:CHILD], runc:[2:INIT]; those of runc
// exec; crun's) are exec'd outside the container's cgroup and moved into it,
// so they have no mark until they exec the entrypoint or command: the mark is
// what the workload cannot forge, unlike its comm (prctl PR_SET_NAME).
// Storage lives and dies with the task; only tasks of traced containers get it.
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} task_workload SEC(".maps");

// Per traced container: its rate limit and the checks it lost, indexed by the
// upper bits of its settings flags. User space writes the whole value when it
// traces a container (resetting the counters) and reads the counters when it
// finishes one. max_entries is set by user space (tracer.max_containers + 1).
struct container_state {
	// Rate limit as a generic cell rate algorithm: one check per interval_ns
	// on average, up to burst checks at once. interval_ns 0: unlimited.
	__u64 interval_ns;
	__u64 tolerance_ns; // (burst - 1) * interval_ns
	__u64 tat;          // theoretical arrival time of the next check, boot ns
	__u64 last_now;     // the latest time a check of the container saw
	__u64 rate_limited; // checks dropped by the limit
	__u64 ring_lost;    // checks lost because the ring buffer was full
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4097);
	__type(key, __u32);
	__type(value, struct container_state);
} container_states SEC(".maps");

// Per CPU: the scheduler tick (jiffies) of the last timestamp and its value.
struct clock_cache {
	__u64 jiffies;
	__u64 boot_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clock_cache);
} cap_clock SEC(".maps");

// Set by user space before load.
volatile const __u64 wakeup_bytes = 64 << 10;    // wake the reader from this much queued (stacked records: once per this much produced)
volatile const __u64 backlog_bytes = 2 << 20;    // stacked records: from this much queued, wake it on every one
volatile const __u64 audit_walk_caps = 0;        // caps that have non-audited callers (bit n = cap n)
volatile const __u32 audit_nranges = 0;          // used entries of audit_ranges
volatile const __u32 stacks_enabled = 0;         // 0: the kernel refused the stack helper; stack code is dead
volatile const __u32 stack_depth = STACK_DEPTH_MAX; // frames per stack, 1..STACK_DEPTH_MAX
// Writable data, not .rodata: with constant bounds the verifier would track
// every frame's range against each one and explode; unknown bounds keep it small.
struct audit_range audit_ranges[AUDIT_RANGES] = {};

static __always_inline void count_loss(enum loss_slot slot)
{
	__u32 key = slot;
	__u64 *v = bpf_map_lookup_elem(&cap_losses, &key);
	if (v)
		__sync_fetch_and_add(v, 1);
}

// event_time returns CLOCK_BOOTTIME. Reading the clock costs ~100 ns on this
// kind of VM, a third of an event: within one scheduler tick a CPU reuses
// the tick's first reading. An isolated check gets its exact time; under a
// flood, checks share a timestamp at most one tick (1-4 ms) early.
static __always_inline __u64 event_time(void)
{
	__u32 zero = 0;
	struct clock_cache *c = bpf_map_lookup_elem(&cap_clock, &zero);
	if (!c)
		return bpf_ktime_get_boot_ns();
	__u64 now = bpf_jiffies64();
	if (c->jiffies != now) {
		c->jiffies = now;
		c->boot_ns = bpf_ktime_get_boot_ns();
	}
	return c->boot_ns;
}

static __always_inline __s32 current_syscall(struct task_struct *task)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return -1;
#if defined(__TARGET_ARCH_arm64)
	struct pt_regs___arm64 {
		int syscallno;
	} __attribute__((preserve_access_index)) *r = (void *)regs;
	return r->syscallno;
#else
	return (__s32)regs->orig_ax;
#endif
}

static __always_inline __u32 range_kind(__u64 ip)
{
	for (__u32 j = 0; j < AUDIT_RANGES; j++) {
		if (j >= audit_nranges)
			break;
		if (ip >= audit_ranges[j].start && ip < audit_ranges[j].end)
			return audit_ranges[j].kind;
	}
	return KIND_NONE;
}

// stack_opts walks the first frames above the program: the frame after
// security_capable is the capability wrapper, the frame after cap_capable its
// direct caller. A known non-audited caller means the kernel passed
// CAP_OPT_NOAUDIT; ns_capable_setid means CAP_OPT_INSETID.
static __always_inline int stack_opts(void *ctx)
{
	__u64 frames[AUDIT_FRAMES] = {};
	long n = bpf_get_stack(ctx, frames, sizeof(frames), 0);
	if (n <= 0)
		return STACK_AUDIT;
	__u32 prev = KIND_NONE;
	for (__u32 i = 0; i < AUDIT_FRAMES; i++) {
		if (i * sizeof(__u64) >= (__u64)n)
			break;
		__u32 kind = range_kind(frames[i]);
		if (kind == KIND_TRANSPARENT)
			continue;
		if (prev == KIND_SECURITY_CAPABLE) {
			if (kind == KIND_NOAUDIT_WRAPPER)
				return STACK_NOAUDIT;
			return kind == KIND_SETID_WRAPPER ? STACK_INSETID : STACK_AUDIT;
		}
		if (prev == KIND_CAP_CAPABLE && kind == KIND_VM_ENOUGH)
			return STACK_NOAUDIT;
		prev = kind;
	}
	return STACK_AUDIT;
}

static __always_inline struct container_state *container_state(__u32 flags)
{
	__u32 idx = flags >> SETTING_STATE_SHIFT;
	if (!idx)
		return NULL;
	return bpf_map_lookup_elem(&container_states, &idx);
}

// over_rate_limit applies the container's limit to one check at time now and
// counts what it drops. One state word and no division: a check passes while
// the schedule (tat) runs at most tolerance_ns ahead of now, and each pass
// moves the schedule one interval on. Over a time D it passes D/interval +
// burst checks. Two CPUs of one container racing on tat can each pass one
// check the schedule had room for only once: the excess is bounded by the
// CPUs, never a loss.
static __always_inline bool over_rate_limit(struct container_state *cs, __u64 now)
{
	__u64 interval = cs->interval_ns;
	if (!interval)
		return false;
	// event_time() is each CPU's first reading in the current tick: a check
	// on another CPU can read a time a little before the one that set tat,
	// and a busy CPU's reading can lag. So the container's clock never runs
	// backwards, and a check is dropped only on the exact clock (a drop pays
	// the ~100 ns reading; a pass does not).
	__u64 last = cs->last_now;
	if (now < last)
		now = last;
	__u64 tat = cs->tat;
	if (tat < now)
		tat = now;
	if (tat - now > cs->tolerance_ns) {
		__u64 exact = bpf_ktime_get_boot_ns();
		if (exact > now) {
			now = exact;
			if (tat < now)
				tat = now;
		}
		if (tat - now > cs->tolerance_ns) {
			__sync_fetch_and_add(&cs->rate_limited, 1);
			count_loss(LOSS_RATE);
			return true;
		}
	}
	if (now > last)
		cs->last_now = now;
	cs->tat = tat + interval;
	return false;
}

// ring_full counts a check lost because the ring buffer was full, against
// its container too.
static __always_inline void ring_full(struct container_state *cs)
{
	count_loss(LOSS_RING);
	if (cs)
		__sync_fetch_and_add(&cs->ring_lost, 1);
}

// seen says whether unique already reported this (cgroup, cap, verdict, audit).
static __always_inline bool seen(struct dedup_key *key, bool audit)
{
	key->audit = audit;
	return bpf_map_lookup_elem(&cap_dedup, key) != NULL;
}

// claim_dedup remembers a unique check once its record is reserved; it
// discards the record and returns false when another CPU reported it first.
// ev->keyed tells user space this check added its key (the exact keys to
// delete when the cgroup goes).
static __always_inline bool claim_dedup(void *rec, struct cap_event *ev, bool unique, struct dedup_key *key)
{
	ev->keyed = 0;
	if (!unique)
		return true;
	__u8 one = 1;
	long err = bpf_map_update_elem(&cap_dedup, key, &one, BPF_NOEXIST);
	if (err == -17 /* EEXIST: another CPU reported it */) {
		bpf_ringbuf_discard(rec, BPF_RB_NO_WAKEUP);
		return false;
	}
	if (err)
		count_loss(LOSS_DEDUP); // still reported; a later check may repeat it
	else
		ev->keyed = 1;
	return true;
}

static __always_inline void fill_event(struct cap_event *e, __u64 now, __u64 cgroup_id, __s32 cap, bool capable,
				       bool audit, bool runtime, bool opts_known, __u32 opts, struct task_struct *task)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	e->cgroup_id = cgroup_id;
	e->ktime_ns = now;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->cap = cap;
	e->syscall = current_syscall(task);
	e->capable = capable;
	e->audit = audit;
	e->insetid = !!(opts & CAP_OPT_INSETID);
	// Without opts, insetid is known when the stack ranges were resolved.
	e->insetid_known = opts_known || audit_nranges > 0;
	e->runtime = runtime;
	e->pad[0] = e->pad[1] = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

// submit_event submits a record, waking the reader with
// BPF_RB_FORCE_WAKEUP or not. A wakeup costs ~3 us here (irq_work and an
// IPI, both VM exits). Below wakeup_bytes queued the reader sleeps until
// its poll deadline.
//   - A plain event wakes it on every record from wakeup_bytes queued: a
//     reader keeping up is woken about once per wakeup_bytes, and the
//     wakeups of one falling behind also slow the traced tasks, which keeps
//     a flood from filling the ring (BenchmarkPipelineThroughput loses
//     nothing this way; with the rule below it lost 32-37 k events per op).
//   - A stacked record (5-21x larger, microseconds to walk) by that rule
//     paid a wakeup on every record as soon as the reader fell a little
//     behind, which slowed it further: 5-7 us per stacked event. From
//     wakeup_bytes queued it wakes the reader when its bytes in the ring
//     (size plus the 8-byte header) take the producer position across a
//     multiple of wakeup_bytes, once per wakeup_bytes produced, and on every
//     record only from backlog_bytes (half the ring) queued. A wakeup missed
//     to a race between CPUs is made up by the next crossing or the poll
//     deadline.
static __always_inline void submit_event(void *e, __u64 record_bytes, bool stacked)
{
	__u64 queued = bpf_ringbuf_query(&cap_events, BPF_RB_AVAIL_DATA);
	bool wake = queued >= wakeup_bytes;
	if (stacked && wake && queued < backlog_bytes) {
		__u64 end = bpf_ringbuf_query(&cap_events, BPF_RB_PROD_POS);
		__u64 start = end - (record_bytes + 8);
		wake = start / wakeup_bytes != end / wakeup_bytes;
	}
	bpf_ringbuf_submit(e, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

// Stacks (issue 13): walked only here, after the filter, dedup, the cred
// check and a successful ring reservation, so a dropped check costs no walk.
static __always_inline __u32 stack_bytes(__u32 frame_size)
{
	__u32 d = stack_depth;
	if (d < 1 || d > STACK_DEPTH_MAX)
		d = STACK_DEPTH_MAX;
	return d * frame_size;
}

static __always_inline __s32 walk_kernel_stack(void *ctx, __u64 *frames)
{
	long n = bpf_get_stack(ctx, frames, stack_bytes(sizeof(__u64)), 0);
	if (n < 0)
		count_loss(LOSS_KSTACK);
	return n;
}

static __always_inline int send_stacked(void *ctx, __u32 stacks, bool unique, struct dedup_key *key,
					__u64 cgroup_id, __s32 cap, bool capable, bool audit, bool runtime, bool opts_known,
					__u32 opts, struct task_struct *task, __u64 now, struct container_state *cs)
{
	if (!(stacks & SETTING_USTACK)) {
		struct cap_event_kstack *k = bpf_ringbuf_reserve(&cap_events, sizeof(*k), 0);
		if (!k) {
			ring_full(cs);
			return 0;
		}
		if (!claim_dedup(k, &k->ev, unique, key))
			return 0;
		fill_event(&k->ev, now, cgroup_id, cap, capable, audit, runtime, opts_known, opts, task);
		k->head.kstack_bytes = walk_kernel_stack(ctx, k->kstack);
		k->head.ustack_bytes = 0;
		submit_event(k, sizeof(*k), true);
		return 0;
	}
	struct cap_event_stacks *s = bpf_ringbuf_reserve(&cap_events, sizeof(*s), 0);
	if (!s) {
		ring_full(cs);
		return 0;
	}
	if (!claim_dedup(s, &s->ev, unique, key))
		return 0;
	fill_event(&s->ev, now, cgroup_id, cap, capable, audit, runtime, opts_known, opts, task);
	s->head.kstack_bytes = 0;
	if (stacks & SETTING_KSTACK)
		s->head.kstack_bytes = walk_kernel_stack(ctx, s->kstack);
	// Build ID and file offset per frame: they name the code even after the
	// process exited (a one-shot entrypoint lives a millisecond).
	long n = bpf_get_stack(ctx, s->ustack, stack_bytes(sizeof(struct bpf_stack_build_id)),
			       BPF_F_USER_STACK | BPF_F_USER_BUILD_ID);
	if (n < 0)
		count_loss(LOSS_USTACK);
	s->head.ustack_bytes = n;
	struct mm_struct *mm = task->mm;
	s->exe.ino = 0;
	s->exe.dev = 0;
	s->exe.ppid = task->real_parent->tgid;
	s->exe.start_code = 0;
	s->exe.end_code = 0;
	if (mm) {
		struct file *exe = mm->exe_file;
		if (exe) {
			s->exe.ino = exe->f_inode->i_ino;
			s->exe.dev = exe->f_inode->i_sb->s_dev;
		}
		s->exe.start_code = mm->start_code;
		s->exe.end_code = mm->end_code;
	}
	submit_event(s, sizeof(*s), true);
	return 0;
}

// report_check is the core shared by every tier. The caller has already
// found the cgroup in the filter, with its settings flags. opts_known says
// whether opts is real (fexit, kprobe); without it the audit flag comes from
// the stack, walked only when nothing cheaper decides the check's fate.
static __always_inline int report_check(void *ctx, __u64 cgroup_id, __u32 flags,
					__u64 cred, __s32 cap, int ret, bool opts_known, __u32 opts)
{
	bool capable = ret == 0;
	bool unique = flags & SETTING_UNIQUE;
	bool audit_only = flags & SETTING_AUDIT_ONLY;
	bool walk = false;
	bool audit = true;
	bool seen_audit = false;
	if (opts_known) {
		audit = !(opts & CAP_OPT_NOAUDIT);
		if (audit_only && !audit)
			return 0;
	} else {
		// Only caps with non-audited or setid callers need the (costly) walk;
		// the others are audited and not in setid.
		walk = cap >= 0 && cap <= 63 && (audit_walk_caps & (1ULL << cap));
		opts = 0;
	}

	// Runtime set-up: a task without the workload mark, in a container
	// traced before its entrypoint ran (one task-storage lookup, only for
	// checks of traced cgroups).
	struct task_struct *task = bpf_get_current_task_btf();
	bool runtime = !(flags & SETTING_ADOPTED) && !bpf_task_storage_get(&task_workload, task, 0, 0);

	struct dedup_key key = {};
	if (unique) {
		key.cgroup_id = cgroup_id;
		key.cap = cap;
		key.capable = capable;
		key.runtime = runtime;
		if (!walk) {
			// audit is known: one lookup of the exact key.
			if (seen(&key, audit))
				return 0;
		} else {
			// Drop without walking when every audit value that could be
			// reported is: the audited one under audit_only (a non-audited
			// check is dropped anyway), else both.
			seen_audit = seen(&key, true);
			if (seen_audit && (audit_only || seen(&key, false)))
				return 0;
		}
	}

	// Checks made under borrowed credentials (overlayfs copy-up, xattrs
	// read with the mounter's creds) say nothing about the task's needs.
	// (After dedup: a hit drops the check either way, and skips this read.)
	if (cred != (__u64)task->real_cred)
		return 0;

	if (walk) {
		int found = stack_opts(ctx);
		opts = found == STACK_NOAUDIT ? CAP_OPT_NOAUDIT : found == STACK_INSETID ? CAP_OPT_INSETID : 0;
		audit = !(opts & CAP_OPT_NOAUDIT);
		if (audit_only && !audit)
			return 0;
		if (unique) {
			// Now dedup on the exact key.
			if (audit ? seen_audit : seen(&key, false))
				return 0;
			key.audit = audit;
		}
	}

	// The rate limit comes after every reason to drop a check for free
	// (filter, dedup, borrowed creds, audit_only) and before the ring: a
	// check over the limit costs no ring space and no user-space CPU.
	__u64 now = event_time();
	struct container_state *cs = container_state(flags);
	if (cs && over_rate_limit(cs, now))
		return 0; // not remembered in dedup: the next identical check tries again

	__u32 stacks = stacks_enabled ? flags & (SETTING_KSTACK | SETTING_USTACK) : 0;
	if (stacks)
		return send_stacked(ctx, stacks, unique, &key, cgroup_id, cap, capable, audit, runtime, opts_known, opts, task, now, cs);

	struct cap_event *e = bpf_ringbuf_reserve(&cap_events, sizeof(*e), 0);
	if (!e) {
		// Not remembered in dedup: the next identical check tries again.
		ring_full(cs);
		return 0;
	}
	if (!claim_dedup(e, e, unique, &key))
		return 0;
	fill_event(e, now, cgroup_id, cap, capable, audit, runtime, opts_known, opts, task);
	submit_event(e, sizeof(*e), false);
	return 0;
}

// traced is the cgroup filter: the slot, then the hash if the slot is shared.
// It stores the settings flags in *flags.
static __always_inline bool traced(__u64 *cgroup_id, __u32 *flags)
{
	__u64 id = bpf_get_current_cgroup_id();
	__u32 slot = id & (FILTER_SLOTS - 1);
	struct filter_slot *fs = bpf_map_lookup_elem(&cgroup_filter_slots, &slot);
	if (!fs || fs->state == SLOT_EMPTY)
		return false;
	if (fs->state == SLOT_ONE && fs->cgroup_id == id) {
		*cgroup_id = id;
		*flags = fs->flags;
		return true;
	}
	// A shared slot, or one naming another cgroup: ask the hash, which always
	// holds every traced cgroup. User space rewrites a slot with a plain
	// 16-byte copy, so a reader racing a ONE <-> SHARED change can see the
	// state of one value with the ID of the other; falling through instead of
	// answering "untraced" keeps the traced cgroup's check. Only untraced
	// cgroups whose slot names another cgroup pay this second lookup.
	*cgroup_id = id;
	const struct settings *s = bpf_map_lookup_elem(&cgroup_filter, cgroup_id);
	if (!s)
		return false;
	*flags = s->flags;
	return true;
}

// cap_capable(const struct cred *cred, struct user_namespace *targ_ns, int cap, unsigned int opts)
SEC("fexit/cap_capable")
int captrace_fexit(__u64 *ctx)
{
	__u64 cgroup_id;
	__u32 flags;
	if (!traced(&cgroup_id, &flags))
		return 0;
	return report_check(ctx, cgroup_id, flags, ctx[0], (__s32)ctx[2], (int)ctx[4], true, (__u32)ctx[3]);
}

// trace_cap_capable(const struct cred *cred, struct user_namespace *target_ns,
//                   const struct user_namespace *capable_ns, int cap, int ret)
SEC("tp_btf/cap_capable")
int captrace_tp_btf(__u64 *ctx)
{
	__u64 cgroup_id;
	__u32 flags;
	if (!traced(&cgroup_id, &flags))
		return 0;
	return report_check(ctx, cgroup_id, flags, ctx[0], (__s32)ctx[3], (int)ctx[4], false, 0);
}

#if defined(__TARGET_ARCH_arm64)
struct captrace_user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
};
#define KPROBE_ARG(ctx, n) (((struct captrace_user_pt_regs *)(ctx))->regs[n])
#define KPROBE_RET(ctx) (((struct captrace_user_pt_regs *)(ctx))->regs[0])
#else
#define KPROBE_ARG(ctx, n) ((n) == 0 ? (ctx)->di : (n) == 1 ? (ctx)->si : (n) == 2 ? (ctx)->dx : (ctx)->cx)
#define KPROBE_RET(ctx) ((ctx)->ax)
#endif

SEC("kprobe/cap_capable")
int captrace_kprobe(struct pt_regs *ctx)
{
	__u64 cgroup_id;
	__u32 flags;
	if (!traced(&cgroup_id, &flags))
		return 0;
	struct pending_check p = {
		.cred = KPROBE_ARG(ctx, 0),
		.cap = (__s32)KPROBE_ARG(ctx, 2),
		.opts = (__u32)KPROBE_ARG(ctx, 3),
	};
	__u64 id = bpf_get_current_pid_tgid();
	if (bpf_map_update_elem(&cap_pending, &id, &p, BPF_ANY))
		count_loss(LOSS_FILTER);
	return 0;
}

SEC("kretprobe/cap_capable")
int captrace_kret(struct pt_regs *ctx)
{
	__u64 cgroup_id;
	__u32 flags;
	if (!traced(&cgroup_id, &flags))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_check *pp = bpf_map_lookup_elem(&cap_pending, &id);
	if (!pp)
		return 0;
	struct pending_check p = *pp;
	bpf_map_delete_elem(&cap_pending, &id);
	return report_check(ctx, cgroup_id, flags, p.cred, p.cap, (int)KPROBE_RET(ctx), true, p.opts);
}

// mark_workload gives task the workload mark; a failure is counted (that
// task's checks would read as runtime set-up).
static __always_inline void mark_workload(struct task_struct *task)
{
	__u32 *mark = bpf_task_storage_get(&task_workload, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (mark)
		*mark = 1;
	else
		count_loss(LOSS_MARK);
}

// sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm):
// the task now runs an image exec'd inside a traced cgroup. It fires after
// the exec's point of no return, so the checks of execve itself (made by
// runc:[2:INIT] while it loads the entrypoint) stay the runtime's. An exec
// elsewhere costs the filter's lookup.
SEC("tp_btf/sched_process_exec")
int captrace_exec(__u64 *ctx)
{
	__u64 cgroup_id;
	__u32 flags;
	if (!traced(&cgroup_id, &flags))
		return 0;
	mark_workload(bpf_get_current_task_btf());
	return 0;
}

// task_newtask(struct task_struct *task, unsigned long clone_flags), run by
// the creating task (current) at the end of copy_process, before the new task
// first runs: it inherits the creator's mark. Unlike sched_process_fork it
// also fires for the threads the kernel creates on a task's behalf (io_uring
// workers, vhost workers: create_io_thread, copy_process without
// kernel_clone), so a workload cannot hand its checks to an unmarked
// io_uring worker. A task created by an unmarked one costs one lookup (a
// task without any storage answers from a NULL pointer).
SEC("tp_btf/task_newtask")
int captrace_fork(__u64 *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx[0];
	if (!bpf_task_storage_get(&task_workload, bpf_get_current_task_btf(), 0, 0))
		return 0;
	mark_workload(task);
	return 0;
}

// Keeps the types that only user space names as a whole (the ring record,
// two enums) in the object's BTF, for bpf2go -type: clang emits BTF for the
// types of globals and functions, not of locals. Never read or written.
struct captrace_btf_anchor {
	struct cap_event event;
	struct stack_head stack_head; // issue 13: the stacked records' parts
	struct exe_id exe_id;
	enum setting_flag setting_flag;
	enum loss_slot loss_slot;
} btf_anchor __attribute__((unused));
