package bpf

// SKELETON: this file holds placeholder bodies so the other rooms compile
// against the seam. The bpf room replaces it with the real loader.

import "fmt"

// Capability is a Linux capability number (CAP_CHOWN = 0 … CAP_CHECKPOINT_RESTORE = 40).
type Capability int32

// String returns the kernel's name, e.g. "CAP_SYS_NICE"; unknown numbers print as "CAP_<n>".
func (c Capability) String() string { return fmt.Sprintf("CAP_%d", int32(c)) }

// SyscallName returns the name of syscall nr on this architecture as the seed
// prints it, e.g. "SYS_SETPRIORITY"; -1 gives "" and unknown numbers "SYS_<n>".
func SyscallName(nr int32) string { return fmt.Sprintf("SYS_%d", nr) }

// Tracer is the loaded and attached kernel program.
type Tracer struct{}

// Open loads the program, choosing the best attach tier the running kernel accepts.
func Open(opts Options) (*Tracer, error) { return nil, fmt.Errorf("bpf: not implemented yet") }

// Tier is the attach point in use.
func (t *Tracer) Tier() Tier { return "" }

// Trace adds cgroupID to the filter map with settings s, or updates its settings.
func (t *Tracer) Trace(cgroupID uint64, s Settings) error { return nil }

// Untrace removes cgroupID from the filter map and forgets its unique entries.
func (t *Tracer) Untrace(cgroupID uint64) error { return nil }

// Read blocks until the next event and decodes it into ev. It returns ErrClosed after Close.
func (t *Tracer) Read(ev *Event) error { return ErrClosed }

// Stats reads the kernel's loss counters and the filter map size.
func (t *Tracer) Stats() (Stats, error) { return Stats{}, nil }

// Close detaches and unloads everything; Read returns ErrClosed afterwards.
func (t *Tracer) Close() error { return nil }

// TierProbe is the result of trying one attach tier on the running kernel.
type TierProbe struct {
	Tier Tier
	Err  error // nil: the kernel loads and attaches it; else why not, naming the requirement
}

// Probe tries every tier in order of preference, loading and detaching each,
// for `captrace doctor` and for Open's log of skipped tiers.
func Probe() []TierProbe { return nil }
