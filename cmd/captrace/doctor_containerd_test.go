package main

import (
	"strings"
	"testing"
)

// checkContainerd on merged configs as `containerd config dump` prints them
// (trimmed); the real dumps of 1.7 to 2.4 are read in the e2e
// (TestDropInContainerdVersions runs doctor against each).
func TestCheckContainerd(t *testing.T) {
	const sock = "/var/run/nri/nri.sock"
	for _, tc := range []struct {
		name    string
		c       runningContainerd
		ok      bool
		needed  bool
		detail  string
		fixHas  []string
		fixLack string
	}{
		{name: "1.7 source build without NRI section", c: runningContainerd{version: "1.7.35+unknown", dump: "version = 2\nimports = [\"/etc/containerd/config.toml\"]\n"},
			needed: true, detail: "NRI is disabled", fixHas: []string{nriDropInPath, importsConfD, "1.7 never reads conf.d"}},
		{name: "2.0 default NRI, drop-in not imported", c: runningContainerd{version: "v2.0.14", dump: "version = 3\n[plugins.'io.containerd.nri.v1.nri']\ndisable = false\nsocket_path = '/var/run/nri/nri.sock'\n"},
			ok: true, needed: true, detail: "NRI enabled on /var/run/nri/nri.sock"},
		{name: "2.4 NRI off in root, conf.d imported", c: runningContainerd{version: "v2.4.2", dump: "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n[plugins.'io.containerd.nri.v1.nri']\ndisable = true\n"},
			needed: true, detail: "NRI is disabled", fixHas: []string{nriDropInPath}, fixLack: importsConfD},
		{name: "2.2 drop-in merged", c: runningContainerd{version: "v2.2.9", dump: "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n[plugins.'io.containerd.nri.v1.nri']\ndisable = false\nsocket_path = '/var/run/nri/nri.sock'\n"},
			ok: true, needed: true, detail: "(" + nriDropInPath + " imported)"},
		{name: "another socket", c: runningContainerd{version: "v2.4.2", dump: "[plugins.'io.containerd.nri.v1.nri']\nsocket_path = '/run/other/nri.sock'\n"},
			needed: true, detail: "NRI serves /run/other/nri.sock, captrace dials " + sock, fixHas: []string{`nri.socket = "/run/other/nri.sock"`}},
		{name: "connections refused", c: runningContainerd{version: "v2.1.9", dump: "[plugins.'io.containerd.nri.v1.nri']\ndisable_connections = true\n"},
			needed: true, detail: "disable_connections = true", fixHas: []string{nriDropInPath}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.pid, tc.c.config = 42, defaultCtrdConf
			f := checkContainerd([]runningContainerd{tc.c}, sock)
			if len(f) != 1 || f[0].ok != tc.ok || f[0].needed != tc.needed || !strings.Contains(f[0].detail, tc.detail) {
				t.Fatalf("got %+v, want ok=%v needed=%v detail %q", f, tc.ok, tc.needed, tc.detail)
			}
			for _, w := range tc.fixHas {
				if !strings.Contains(f[0].fix, w) {
					t.Errorf("fix %q lacks %q", f[0].fix, w)
				}
			}
			if tc.fixLack != "" && strings.Contains(f[0].fix, tc.fixLack) {
				t.Errorf("fix %q says %q although conf.d is imported", f[0].fix, tc.fixLack)
			}
		})
	}
	// Two containerds: the one on another socket is only a note.
	f := checkContainerd([]runningContainerd{
		{pid: 1, version: "v2.4.2", dump: "[plugins.'io.containerd.nri.v1.nri']\nsocket_path = '/tmp/x/nri.sock'\n"},
		{pid: 2, version: "v2.4.2", dump: "[plugins.'io.containerd.nri.v1.nri']\nsocket_path = '/var/run/nri/nri.sock'\n"},
	}, sock)
	if len(f) != 2 || f[0].needed || f[0].ok || !f[1].needed || !f[1].ok {
		t.Errorf("two containerds: %+v", f)
	}
}
