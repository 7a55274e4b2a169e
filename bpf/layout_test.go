package bpf

import (
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestLayoutMatchesObject holds every Go type and constant that shares a
// layout with captrace.c to the committed object's BTF, in the spirit of
// Tetragon's pkg/alignchecker: a change to captrace.c that Go misses (an
// object rebuilt without its generated Go, or a hand-kept constant) fails here.
func TestLayoutMatchesObject(t *testing.T) {
	spec, err := loadCaptrace()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cName  string
		goType reflect.Type
	}{
		{"cap_event", reflect.TypeFor[capEvent]()},
		{"filter_slot", reflect.TypeFor[filterSlot]()},
		{"dedup_key", reflect.TypeFor[dedupKey]()},
		{"audit_range", reflect.TypeFor[auditRange]()},
		{"settings", reflect.TypeFor[captraceSettings]()},
	} {
		var s *btf.Struct
		if err := spec.Types.TypeByName(c.cName, &s); err != nil {
			t.Errorf("struct %s: %v", c.cName, err)
			continue
		}
		checkStructLayout(t, s, c.goType)
	}

	// Hand-kept sizes: the map and array lengths Go indexes.
	if got := spec.Maps["cgroup_filter_slots"].MaxEntries; got != filterSlots {
		t.Errorf("cgroup_filter_slots has %d entries (FILTER_SLOTS), Go's filterSlots is %d", got, filterSlots)
	}
	if got := spec.Maps["cap_losses"].MaxEntries; got != uint32(captraceLossSlotLOSS_SLOTS) {
		t.Errorf("cap_losses has %d entries, LOSS_SLOTS is %d", got, captraceLossSlotLOSS_SLOTS)
	}
	ranges, ok := spec.Variables["audit_ranges"]
	if !ok {
		t.Fatal("no variable audit_ranges")
	}
	arr, ok := btf.UnderlyingType(ranges.Type.Type).(*btf.Array)
	if !ok || arr.Nelems != auditRangeSlots {
		t.Errorf("audit_ranges is %v, Go's auditRangeSlots is %d", ranges.Type.Type, auditRangeSlots)
	}
	if eventSize != 64 {
		t.Errorf("struct cap_event is %d bytes; the comment in captrace.c and the ring's wakeup maths assume 64", eventSize)
	}
}

// checkStructLayout compares a Go struct with a BTF struct: total size, and
// each member's name, offset and size, in order. Go's blank fields
// (structs.HostLayout) take no room and are skipped.
func checkStructLayout(t *testing.T, s *btf.Struct, goType reflect.Type) {
	t.Helper()
	if goType.Size() != uintptr(s.Size) {
		t.Errorf("%s: Go %s is %d bytes, the object's struct %d", s.Name, goType, goType.Size(), s.Size)
	}
	var fields []reflect.StructField
	for i := range goType.NumField() {
		if f := goType.Field(i); f.Name != "_" {
			fields = append(fields, f)
		}
	}
	if len(fields) != len(s.Members) {
		t.Errorf("%s: Go %s has %d fields, the object's struct %d members", s.Name, goType, len(fields), len(s.Members))
		return
	}
	for i, m := range s.Members {
		f := fields[i]
		if !strings.EqualFold(f.Name, strings.ReplaceAll(m.Name, "_", "")) {
			t.Errorf("%s: member %d is %s in the object, %s in Go", s.Name, i, m.Name, f.Name)
		}
		if m.BitfieldSize != 0 {
			t.Errorf("%s.%s: bitfields have no Go mirror", s.Name, m.Name)
			continue
		}
		if off := m.Offset.Bytes(); uintptr(off) != f.Offset {
			t.Errorf("%s.%s: offset %d in the object, %d in Go", s.Name, m.Name, off, f.Offset)
		}
		size, err := btf.Sizeof(m.Type)
		if err != nil {
			t.Errorf("%s.%s: %v", s.Name, m.Name, err)
			continue
		}
		if uintptr(size) != f.Type.Size() {
			t.Errorf("%s.%s: %d bytes in the object, %d in Go", s.Name, m.Name, size, f.Type.Size())
		}
	}
}
