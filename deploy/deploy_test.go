// Package deploy holds captrace's systemd unit, containerd drop-in and example
// config; its tests check them and `make install`/`make uninstall`.
package deploy

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/captrace/captrace/config"
	"github.com/captrace/captrace/internal/privilege"
	"github.com/captrace/captrace/internal/privtest"
)

// unitSettings reads key=value lines of a systemd unit (last one wins).
func unitSettings(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	settings := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s: not key=value: %q", path, line)
			continue
		}
		settings[k] = v
	}
	return settings
}

func TestUnit(t *testing.T) {
	s := unitSettings(t, "captrace.service")
	for key, want := range map[string]string{
		"Restart":                 "on-failure",
		"After":                   "containerd.service",
		"ExecStart":               "/usr/local/bin/captrace --config " + config.DefaultPath,
		"LogRateLimitIntervalSec": "30s",
		"LogRateLimitBurst":       "50000",
		"KillSignal":              "SIGTERM",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"SyslogIdentifier":        "captrace",
	} {
		if s[key] != want {
			t.Errorf("captrace.service %s=%q, want %q", key, s[key], want)
		}
	}
}

// analyzableUnit writes a copy of the unit for systemd-analyze, whose
// ExecStart must exist: any existing executable stands in for the binary.
func analyzableUnit(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		privtest.Lacks(t, "systemd-analyze (apt-get install systemd)")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile("captrace.service")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "captrace.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/captrace", exe)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// systemd-analyze verify knows every directive of the installed systemd
// version: a misspelt one is reported (and would be ignored by systemd).
func TestUnitVerifies(t *testing.T) {
	path := analyzableUnit(t)
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "captrace.service") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The unit confines captrace to internal/privilege's capability set, the
// one the e2e suite runs the daemon with.
func TestUnitCapabilities(t *testing.T) {
	s := unitSettings(t, "captrace.service")
	want := strings.Join(privilege.Names(), " ")
	for _, key := range []string{"CapabilityBoundingSet", "AmbientCapabilities"} {
		if s[key] != want {
			t.Errorf("captrace.service %s=%q, want %q (internal/privilege)", key, s[key], want)
		}
	}
	for key, value := range map[string]string{
		"LimitMEMLOCK": "infinity", "NoNewPrivileges": "yes", "RestrictAddressFamilies": "AF_UNIX",
		"RestrictNamespaces": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
		"SystemCallArchitectures": "native", "PrivateTmp": "yes", "UMask": "0027",
		"ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
		"ProtectControlGroups": "yes",
	} {
		if s[key] != value {
			t.Errorf("captrace.service %s=%q, want %q", key, s[key], value)
		}
	}
	// It would hide /proc/kallsyms, which CAP_SYSLOG is there to read.
	if _, ok := s["ProtectKernelTunables"]; ok {
		t.Error("captrace.service sets ProtectKernelTunables=, which makes /proc/kallsyms inaccessible")
	}
}

// maxExposure is the highest `systemd-analyze security` exposure the unit may
// have (it was 9.1 "UNSAFE" before the unit was confined).
const maxExposure = 3.0

func TestUnitExposure(t *testing.T) {
	path := analyzableUnit(t)
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security --offline: %v\n%s", err, out)
	}
	const marker = "Overall exposure level for captrace.service: "
	i := strings.Index(string(out), marker)
	if i < 0 {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	fields := strings.Fields(string(out[i+len(marker):]))
	exposure, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		t.Fatalf("exposure %q: %v", fields[0], err)
	}
	t.Logf("systemd-analyze security exposure %.1f %s", exposure, fields[1])
	if exposure > maxExposure {
		t.Errorf("exposure %.1f > %.1f:\n%s", exposure, maxExposure, out)
	}
}

func TestContainerdDropIn(t *testing.T) {
	var dropIn struct {
		Version int                       `toml:"version"`
		Plugins map[string]map[string]any `toml:"plugins"`
	}
	md, err := toml.DecodeFile("containerd-nri.toml", &dropIn)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Errorf("unexpected keys %v", u)
	}
	nri := dropIn.Plugins["io.containerd.nri.v1.nri"]
	if md.IsDefined("version") || nri == nil || nri["disable"] != false || nri["disable_connections"] != false ||
		nri["socket_path"] != config.Defaults().NRI.Socket {
		t.Errorf("drop-in: version %d, nri %v; want no version line, NRI enabled on %s", dropIn.Version, nri, config.Defaults().NRI.Socket)
	}
}

func listFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(root, path)
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files)
	return files
}

func TestMakeInstallAndUninstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		privtest.Lacks(t, "make (apt-get install make)")
	}
	dest := t.TempDir()
	mk := func(target string) string {
		t.Helper()
		cmd := exec.Command("make", "-s", "-C", "..", target, "DESTDIR="+dest, "PREFIX=/opt/captrace")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out)
		}
		return string(out)
	}
	mk("install")
	want := []string{
		"etc/captrace/config.toml",
		"etc/captrace/config.toml.example",
		"etc/containerd/conf.d/captrace-nri.toml",
		"opt/captrace/bin/captrace",
		"opt/captrace/lib/systemd/system/captrace.service",
	}
	if got := listFiles(t, dest); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("installed %v, want %v", got, want)
	}
	if s := unitSettings(t, filepath.Join(dest, "opt/captrace/lib/systemd/system/captrace.service")); s["ExecStart"] != "/opt/captrace/bin/captrace --config /etc/captrace/config.toml" {
		t.Errorf("installed unit runs %q", s["ExecStart"])
	}

	// An edited config survives install and uninstall.
	cfgPath := filepath.Join(dest, "etc/captrace/config.toml")
	edited := []byte("[trace]\nunique = true\n")
	if err := os.WriteFile(cfgPath, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	if out := mk("install"); !strings.Contains(out, "keeping the existing /etc/captrace/config.toml") {
		t.Errorf("second install did not say it kept the config: %s", out)
	}
	mk("uninstall")
	if got := listFiles(t, dest); strings.Join(got, " ") != "etc/captrace/config.toml" {
		t.Errorf("after uninstall: %v, want only the edited config", got)
	}
	if data, _ := os.ReadFile(cfgPath); string(data) != string(edited) {
		t.Errorf("edited config changed: %q", data)
	}
	// An unedited config goes with uninstall.
	os.Remove(cfgPath)
	mk("install")
	mk("uninstall")
	if got := listFiles(t, dest); len(got) != 0 {
		t.Errorf("after install+uninstall: %v left", got)
	}
}

// make dist: a static, stamped binary in a tarball with the unit, the
// drop-in, the example config, LICENSE and their SHA-256 sums, byte for byte
// the same when built twice from one commit.
func TestMakeDist(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		privtest.Lacks(t, "make (apt-get install make)")
	}
	build := func() (dir string, tarball []byte) {
		t.Helper()
		dir = t.TempDir()
		out, err := exec.Command("make", "-s", "-C", "..", "dist", "DISTDIR="+dir, "ARCHES=amd64", "VERSION=v9.9.9-test").CombinedOutput()
		if err != nil {
			t.Fatalf("make dist: %v\n%s", err, out)
		}
		tarball, err = os.ReadFile(filepath.Join(dir, "captrace-v9.9.9-test-linux-amd64.tar.gz"))
		if err != nil {
			t.Fatal(err)
		}
		return dir, tarball
	}
	dir, first := build()
	_, second := build()
	if !bytes.Equal(first, second) {
		t.Errorf("two builds of one commit gave different tarballs (%d and %d bytes)", len(first), len(second))
	}

	files := map[string][]byte{}
	gz, err := gzip.NewReader(bytes.NewReader(first))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d", h.Name, h.Uid, h.Gid)
		}
		if h.Typeflag == tar.TypeReg {
			data, _ := io.ReadAll(tr)
			files[strings.TrimPrefix(h.Name, "captrace-v9.9.9-test-linux-amd64/")] = data
		}
	}
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	if got := strings.Join(names, " "); got != "LICENSE SHA256SUMS captrace captrace.service config.toml containerd-nri.toml" {
		t.Fatalf("tarball holds %s", got)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(files["SHA256SUMS"])), "\n") {
		sum, name, _ := strings.Cut(line, "  ")
		got := sha256.Sum256(files[name])
		if hex.EncodeToString(got[:]) != sum {
			t.Errorf("SHA256SUMS: %s does not match %s", line, name)
		}
	}
	if len(strings.Split(strings.TrimSpace(string(files["SHA256SUMS"])), "\n")) != 5 {
		t.Errorf("SHA256SUMS covers %q, want the 5 other files", files["SHA256SUMS"])
	}

	bin := filepath.Join(dir, "captrace-v9.9.9-test-linux-amd64", "captrace")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: not static", bin)
		}
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "v9.9.9-test") || !strings.Contains(string(out), "commit") {
		t.Errorf("captrace version: %v %s", err, out)
	}
}
