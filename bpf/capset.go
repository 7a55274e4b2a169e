package bpf

import (
	"fmt"
	"strings"
)

// CapSet is a set of capabilities, bit n for capability n (every capability
// the kernel has fits: CAP_LAST_CAP is 40).
type CapSet uint64

// Has reports whether c is in the set.
func (s CapSet) Has(c Capability) bool { return c >= 0 && c < 64 && s&(1<<uint(c)) != 0 }

// MaxCapSetText bounds the text ParseCapSet reads (every name once with
// its prefix is under 700 bytes).
const MaxCapSetText = 1024

// ParseCapSet reads a comma-separated list of capability names, each with or
// without "CAP_", in any case ("NET_BIND_SERVICE,cap_sys_nice"). An empty
// list is the empty set.
func ParseCapSet(list string) (CapSet, error) {
	if len(list) > MaxCapSetText {
		return 0, fmt.Errorf("longer than %d bytes", MaxCapSetText)
	}
	var s CapSet
	for _, item := range strings.Split(list, ",") {
		name := strings.ToUpper(strings.TrimSpace(item))
		if name == "" {
			continue
		}
		if !strings.HasPrefix(name, "CAP_") {
			name = "CAP_" + name
		}
		found := false
		for c := Capability(0); c <= LastCapability; c++ {
			if capNames[c] == name {
				s |= 1 << uint(c)
				found = true
				break
			}
		}
		if !found {
			shown := strings.TrimSpace(item)
			if len(shown) > 32 { // the message is logged: a prefix says enough
				shown = shown[:32] + "…"
			}
			return 0, fmt.Errorf("%q is no capability name (want e.g. NET_BIND_SERVICE,SYS_NICE)", shown)
		}
	}
	return s, nil
}
