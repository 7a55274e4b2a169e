package stack

import (
	"testing"

	"github.com/BurntSushi/toml"
)

// Every containerd config the stack writes is TOML with the stack's private
// root and sockets, in the version asked for, with the NRI section given.
func TestContainerdConfigs(t *testing.T) {
	s := &Stack{Dir: "/tmp/captrace-e2e/abc123", Tools: Tools{Runc: "/usr/sbin/runc"}}
	for name, tc := range map[string]struct {
		text    string
		version int
		nriOff  bool
	}{
		"stack":   {containerdConfig(s.Dir, s.Tools), 3, false},
		"node v2": {NodeRootConfig(s, 2, `imports = ["/etc/containerd/conf.d/*.toml"]`, NRIOffV2), 2, true},
		"node v3": {NodeRootConfig(s, 3, "", NRIOffV3), 3, true},
	} {
		var c struct {
			Version int    `toml:"version"`
			Root    string `toml:"root"`
			GRPC    struct {
				Address string `toml:"address"`
			} `toml:"grpc"`
			Plugins map[string]map[string]any `toml:"plugins"`
		}
		if _, err := toml.Decode(tc.text, &c); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, tc.text)
		}
		nri := c.Plugins["io.containerd.nri.v1.nri"]
		if c.Version != tc.version || c.Root != s.Dir+"/root" || c.GRPC.Address != s.Dir+"/containerd.sock" || nri["disable"] != tc.nriOff {
			t.Errorf("%s: version %d root %s grpc %s nri %v", name, c.Version, c.Root, c.GRPC.Address, nri)
		}
	}
}
