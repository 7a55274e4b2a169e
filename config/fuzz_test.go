package config

import (
	"strings"
	"testing"
)

// FuzzParse: any file content either fails with an *Error-carrying message
// that names the file, or gives a config that validates.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"", "[nri]\nsocket = \"/run/nri.sock\"\n",
		"[tracer]\nmax_containers = 4096\nring_buffer_bytes = 4194304\ntier = \"tp_btf\"\n",
		"[trace]\nallow_namespaces = [\"a\"]\ndeny_namespaces = [\"kube-system\"]\nunique = true\n",
		"[output]\nsinks = [\"stdout\", \"file\"]\nfile = \"/var/log/captrace/events.log\"\nqueue_size = 1\n",
		"[tracer]\nmax_containers = -1\n", "[nri\n", "x = 1\n", "[output]\nsinks = \"stdout\"\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.toml", data)
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.toml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
	})
}
