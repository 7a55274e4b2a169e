package output

import "sync"

// fairQueue is one sink's bounded queue, shared fairly among containers.
// Each container (cgroup ID) has a lane; the sink takes records from the
// lanes in turn, so a flooding container's backlog does not delay a quiet
// one's records behind it. When the queue is full, a container that holds
// at least its share (capacity / containers with queued records) loses its
// new record; one below its share pushes out the oldest record of the
// container holding the most. Either way the drop is charged to the
// container that overflowed, never to the quiet one.
type fairQueue struct {
	mu       sync.Mutex
	ready    chan struct{} // one token while records wait: wakes the sink's goroutine
	closed   bool
	capacity int
	total    int
	lanes    map[uint64]*lane
	turn     []*lane // lanes holding records, in round-robin order
	next     int     // index in turn of the lane to serve next
	spare    []*lane // emptied lanes, reused
	last     *lane   // the lane of the last push: a flood pushes to one lane
	// drops per container since takeDrops, bounded by maxDropKeys.
	drops map[uint64]uint64
}

// lane is one container's records, oldest first.
type lane struct {
	key   uint64
	items []item
	head  int // items[head:] are queued
}

func (l *lane) len() int { return len(l.items) - l.head }

// maxDropKeys bounds the per-container drop counts kept for containers that
// nobody asked about (e.g. unknown cgroups); past it, drops of new
// containers are charged to key 0, and still counted.
const maxDropKeys = 1 << 16

// maxSpareLanes bounds the emptied lanes kept for reuse.
const maxSpareLanes = 64

func newFairQueue(capacity int) *fairQueue {
	return &fairQueue{
		ready:    make(chan struct{}, 1),
		capacity: max(capacity, 1),
		lanes:    map[uint64]*lane{},
		drops:    map[uint64]uint64{},
	}
}

// push queues it for container key without blocking. It returns how many
// records were dropped (0 or 1): the new one, or one pushed out.
func (q *fairQueue) push(key uint64, it item) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pushLocked(key, it)
}

func (q *fairQueue) pushLocked(key uint64, it item) int {
	if q.closed {
		q.chargeLocked(key)
		return 1
	}
	l := q.last
	if l == nil || l.key != key || q.lanes[key] != l {
		l = q.lanes[key]
	}
	dropped := 0
	if q.total >= q.capacity {
		active := len(q.turn)
		if l == nil || l.len() == 0 {
			active++
		}
		share := max(q.capacity/active, 1)
		if l != nil && l.len() >= share {
			q.chargeLocked(key)
			return 1
		}
		q.pushOutLocked()
		dropped = 1
	}
	if l == nil {
		l = q.laneLocked(key)
	}
	if l.len() == 0 {
		q.turn = append(q.turn, l)
	}
	if len(l.items) == cap(l.items) && l.head > 0 {
		// Reuse the room of records already taken rather than grow: a lane
		// that never runs empty (a flood) keeps at most the queue's capacity.
		n := copy(l.items, l.items[l.head:])
		clear(l.items[n:])
		l.items, l.head = l.items[:n], 0
	}
	l.items = append(l.items, it)
	q.last = l
	q.total++
	// Only the first record wakes the sink's goroutine: it takes records
	// until the queue is empty before it waits again.
	if q.total == 1 {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	return dropped
}

// pushOutLocked drops the oldest record of the fullest lane.
func (q *fairQueue) pushOutLocked() {
	var fullest *lane
	for _, l := range q.turn {
		if fullest == nil || l.len() > fullest.len() {
			fullest = l
		}
	}
	fullest.items[fullest.head] = item{}
	fullest.head++
	q.total--
	q.chargeLocked(fullest.key)
	if fullest.len() == 0 {
		q.retireLocked(fullest)
	}
}

func (q *fairQueue) chargeLocked(key uint64) {
	if _, ok := q.drops[key]; !ok && len(q.drops) >= maxDropKeys {
		key = 0
	}
	q.drops[key]++
}

func (q *fairQueue) laneLocked(key uint64) *lane {
	var l *lane
	if n := len(q.spare); n > 0 {
		l, q.spare = q.spare[n-1], q.spare[:n-1]
	} else {
		l = &lane{}
	}
	l.key = key
	q.lanes[key] = l
	return l
}

// retireLocked takes an empty lane out of the rotation and keeps it for reuse.
func (q *fairQueue) retireLocked(l *lane) {
	for i, t := range q.turn {
		if t == l {
			q.turn = append(q.turn[:i], q.turn[i+1:]...)
			if q.next > i {
				q.next--
			}
			break
		}
	}
	if q.next >= len(q.turn) {
		q.next = 0
	}
	delete(q.lanes, l.key)
	if q.last == l {
		q.last = nil
	}
	// Taken records were zeroed one by one: the slice holds nothing to free.
	l.items, l.head = l.items[:0], 0
	if len(q.spare) < maxSpareLanes {
		q.spare = append(q.spare, l)
	}
}

// popBatch waits for records and moves up to len(out) of them into out,
// taking one from each container in turn. It returns 0 once the queue is
// closed and empty.
func (q *fairQueue) popBatch(out []item) int {
	for {
		q.mu.Lock()
		if q.total > 0 {
			n := 0
			for n < len(out) && q.total > 0 {
				l := q.turn[q.next]
				out[n] = l.items[l.head]
				l.items[l.head] = item{}
				l.head++
				q.total--
				n++
				if l.len() == 0 {
					q.retireLocked(l)
				} else if q.next++; q.next >= len(q.turn) {
					q.next = 0
				}
			}
			q.mu.Unlock()
			return n
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return 0
		}
		<-q.ready
	}
}

// len is how many records wait.
func (q *fairQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total
}

// close makes later pushes drops; popBatch returns what is queued, then 0.
func (q *fairQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// discardAll drops every queued record, charging each to its container.
func (q *fairQueue) discardAll() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.total
	for len(q.turn) > 0 {
		l := q.turn[0]
		for range l.len() {
			q.chargeLocked(l.key)
		}
		l.head = len(l.items)
		q.retireLocked(l)
	}
	q.total = 0
	return n
}

// takeDrops returns and forgets the drops charged to key.
func (q *fairQueue) takeDrops(key uint64) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.drops[key]
	delete(q.drops, key)
	return n
}
