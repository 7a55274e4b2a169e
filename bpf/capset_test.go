package bpf

import "testing"

func TestParseCapSet(t *testing.T) {
	s, err := ParseCapSet(" NET_BIND_SERVICE, cap_sys_nice ,")
	if err != nil {
		t.Fatal(err)
	}
	for c := Capability(0); c <= LastCapability; c++ {
		if want := c == 10 || c == capSysNice; s.Has(c) != want {
			t.Errorf("%s: Has = %v", c, s.Has(c))
		}
	}
	if s, err := ParseCapSet(""); err != nil || s != 0 {
		t.Errorf("empty: %v %v", s, err)
	}
	for _, bad := range []string{"SYS_NICE,NOPE", "CAP_41", string(make([]byte, MaxCapSetText+1))} {
		if _, err := ParseCapSet(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
