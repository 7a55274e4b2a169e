//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privilege"
	"github.com/captrace/captrace/test/e2e/stack"
)

// requiredMask is internal/privilege's set as a capability mask.
func requiredMask() uint64 {
	var m uint64
	for _, c := range privilege.Required {
		m |= 1 << c.Bit
	}
	return m
}

// The daemon every other e2e test talks to runs with exactly the capability
// set of internal/privilege, as the systemd unit runs it: the whole suite
// passing is the proof that the set is enough.
func TestDaemonRunsWithLeastPrivilege(t *testing.T) {
	pid := st.CaptracePID()
	if pid == 0 {
		t.Fatal("captrace is not running")
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"CapInh": 0, "CapPrm": requiredMask(), "CapEff": requiredMask(), "CapBnd": requiredMask(), "CapAmb": 0, "NoNewPrivs": 1}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		w, checked := want[k]
		if !ok || !checked {
			continue
		}
		base := 16
		if k == "NoNewPrivs" {
			base = 10
		}
		got, err := strconv.ParseUint(strings.TrimSpace(v), base, 64)
		if err != nil || got != w {
			t.Errorf("captrace (pid %d) %s = %s, want %x (%s)", pid, k, strings.TrimSpace(v), w, strings.Join(privilege.Names(), ","))
		}
		delete(want, k)
	}
	if len(want) > 0 {
		t.Errorf("/proc/%d/status lacks %v", pid, want)
	}
}

// Each capability of the set is needed: without it the daemon fails (or,
// for CAP_SYSLOG, loses the audit flag) with an error that names it.
func TestEachCapabilityIsNeeded(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "captrace.toml")
	// No NRI socket: the tracer loads (or not) before captrace dials containerd.
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[nri]\nsocket = %q\n[output]\nsinks = [\"stdout\"]\n", filepath.Join(dir, "no-nri.sock"))), 0o644); err != nil {
		t.Fatal(err)
	}
	// What a user sees without each capability.
	symptoms := map[string][]string{
		"CAP_BPF":     {`msg="captrace stopped"`, "load the BPF tracer", "captrace lacks CAP_BPF (create BPF maps"},
		"CAP_PERFMON": {`msg="captrace stopped"`, "load the BPF tracer", "captrace lacks CAP_PERFMON (load and attach tracing programs"},
		"CAP_SYSLOG": {"cannot tell non-audited checks apart; every check reads audit=true",
			"captrace lacks CAP_SYSLOG (read kernel addresses in /proc/kallsyms"},
	}
	run := func(t *testing.T, exclude []string) (string, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		argv := stack.ConfinedArgv(st.Tools.Setpriv, []string{st.CaptraceBin(), "--config", cfg}, exclude)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		// A file, not a buffer: it is read while the daemon writes it.
		logPath := filepath.Join(t.TempDir(), "captrace.log")
		logFile, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		defer logFile.Close()
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		out := func() string { b, _ := os.ReadFile(logPath); return string(b) }
		// Running: it attached and now waits for the NRI socket.
		for {
			select {
			case err := <-exited:
				return out(), err == nil
			case <-time.After(50 * time.Millisecond):
			}
			if strings.Contains(out(), "cannot connect to containerd's NRI socket") {
				cmd.Process.Signal(syscall.SIGTERM)
				err := <-exited
				return out(), err == nil
			}
		}
	}
	t.Run("all", func(t *testing.T) {
		out, ok := run(t, nil)
		if !ok || !strings.Contains(out, `msg="tracer attached"`) || strings.Contains(out, "capabilities missing") ||
			strings.Contains(out, "cannot tell non-audited") {
			t.Fatalf("with %s: exit ok %v\n%s", strings.Join(privilege.Names(), ","), ok, out)
		}
	})
	for _, c := range privilege.Required {
		t.Run("without "+c.Name, func(t *testing.T) {
			want, ok := symptoms[c.Name]
			if !ok {
				t.Fatalf("no symptom known for %s: add it to this test", c.Name)
			}
			out, _ := run(t, []string{c.Name})
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Errorf("without %s the daemon does not say %q:\n%s", c.Name, w, out)
				}
			}
			if !t.Failed() {
				for _, line := range strings.Split(out, "\n") {
					if strings.Contains(line, "level=error") || strings.Contains(line, "level=warning") {
						t.Logf("without %s: %.300s", c.Name, line)
					}
				}
			}
		})
	}
}
