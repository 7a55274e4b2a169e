package output

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/internal/privtest"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/sirupsen/logrus"
)

// The privileged journald test runs in three processes, because the journal
// socket path is fixed and a Go process cannot change its mount namespace:
//
//	test (host)  creates <cgroup2>/system.slice/captrace.service, starts
//	  └ namespace helper   in a private mount namespace: tmpfs over
//	      │                /run/systemd, /run/log and /var/log/journal,
//	      │                a standalone systemd-journald, journalctl queries
//	      ├ writer web-0   the journald sink, in the helper's cgroup
//	      └ writer web-1   the journald sink, started inside captrace.service
//
// Writers wait until journald has stored their entries before exiting: journald
// reads the sender's cgroup from /proc/PID when it processes the datagram.
const (
	helperEnv     = "CAPTRACE_JOURNALD_TEST_ROLE" // "namespace" or "writer"
	helperPodEnv  = "CAPTRACE_JOURNALD_TEST_POD"
	helperUnitEnv = "CAPTRACE_JOURNALD_TEST_UNIT_CGROUP"
	journaldPath  = "/lib/systemd/systemd-journald"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "namespace":
		os.Exit(reportHelper(namespaceHelper()))
	case "writer":
		os.Exit(reportHelper(writerHelper(os.Getenv(helperPodEnv))))
	case "bench":
		os.Exit(reportHelper(journaldBenchHelper()))
	}
	os.Exit(m.Run())
}

func reportHelper(err error) int {
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

// journalTestRecords are the events a writer for pod sends: every field set,
// one with a hostile comm.
func journalTestRecords(pod string) []EnrichedEvent {
	base := time.Date(2026, 11, 29, 10, 0, 0, 123456789, time.UTC)
	var recs []EnrichedEvent
	for i, c := range []struct {
		comm    string
		cap     bpf.Capability
		sys     int32
		capable bool
	}{
		{"nice", 23, 141, false},
		{"mount", 21, 165, true},
		{"a\"b c=d\nx=1", 21, 308, true},
	} {
		r := EnrichedEvent{
			Time: base.Add(time.Duration(i) * time.Millisecond),
			Event: bpf.Event{
				CgroupID: 7000 + uint64(i), Pid: 4000 + uint32(i), Tid: 4100 + uint32(i), Uid: 1000, Gid: 1001,
				Cap: c.cap, Syscall: c.sys, Capable: c.capable, Audit: true,
				InSetID: i == 1, InSetIDKnown: true,
			},
			Container: cgmap.Container{
				ID: fmt.Sprintf("%s-container-%d", pod, i), Name: "app", Namespace: "team-a",
				Pod: pod, PodUID: "uid-" + pod, CgroupID: 7000 + uint64(i),
			},
			Known: true,
		}
		copy(r.Event.Comm[:], c.comm)
		recs = append(recs, r)
	}
	return recs
}

func TestJournaldSinkWithStandaloneJournald(t *testing.T) {
	privtest.Root(t)
	for _, bin := range []string{journaldPath, "journalctl"} {
		if _, err := exec.LookPath(bin); err != nil {
			privtest.Lacks(t, bin+" (apt-get install systemd)")
		}
	}
	unitCgroup := makeUnitCgroup(t)

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=namespace", helperUnitEnv+"="+unitCgroup)
	// Go makes the new mount namespace's mounts private (MS_REC|MS_PRIVATE on
	// /) before exec, so nothing mounted there reaches the host.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("namespace helper: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	var results map[string][]map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &results); err != nil {
		t.Fatalf("helper output: %v\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}

	for _, name := range []string{"pod", "unit", "recipe"} {
		if e := results[name]; len(e) > 0 {
			t.Logf("%s query: %d entries; first: MESSAGE=%q _SYSTEMD_UNIT=%v", name, len(e), journalValue(e[0]["MESSAGE"]), e[0]["_SYSTEMD_UNIT"])
		}
	}
	// journalctl K8S_POD_NAME=web-0 -o json: every record with every field.
	checkEntries(t, "K8S_POD_NAME=web-0", results["pod"], journalTestRecords("web-0"), false)
	// journalctl -u captrace: only the writer that ran in captrace.service.
	checkEntries(t, "-u captrace", results["unit"], journalTestRecords("web-1"), true)
	// The README's recipe: unit, pod and capability together.
	var admin []EnrichedEvent
	for _, r := range journalTestRecords("web-1") {
		if r.Event.Cap == 21 {
			admin = append(admin, r)
		}
	}
	checkEntries(t, "-u captrace K8S_POD_NAME=web-1 CAP=...", results["recipe"], admin, true)
}

// startPrivateJournald starts a standalone journald with tmpfs over its
// directories; the caller runs in a mount namespace of its own. stop ends
// journald by its PID and adds its output to a failure.
func startPrivateJournald() (stop func(error) error, err error) {
	for _, dir := range []string{"/run/systemd", "/run/log", "/var/log/journal"} {
		if _, statErr := os.Stat(dir); statErr != nil {
			continue // absent: journald creates it under /run's tmpfs below if needed
		}
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
			return nil, fmt.Errorf("mount tmpfs on %s: %w", dir, err)
		}
	}
	if _, statErr := os.Stat("/run/systemd"); statErr != nil {
		if err := syscall.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755"); err != nil {
			return nil, fmt.Errorf("mount tmpfs on /run: %w", err)
		}
	}
	journald := exec.Command(journaldPath)
	var journaldOut bytes.Buffer
	journald.Stdout, journald.Stderr = &journaldOut, &journaldOut
	journald.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := journald.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", journaldPath, err)
	}
	stop = func(err error) error {
		_ = journald.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- journald.Wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = journald.Process.Kill()
			<-done
		}
		if err != nil {
			err = fmt.Errorf("%w\njournald output:\n%s", err, journaldOut.String())
		}
		return err
	}
	if err := waitUntil(5*time.Second, JournaldAvailable); err != nil {
		return nil, stop(fmt.Errorf("journald socket %s did not appear: %w", JournalSocket, err))
	}
	return stop, nil
}

// checkEntries compares journalctl's JSON entries with the records, field by field.
func checkEntries(t *testing.T, query string, entries []map[string]any, recs []EnrichedEvent, inUnit bool) {
	t.Helper()
	if len(entries) != len(recs) {
		t.Errorf("journalctl %s: %d entries, want %d: %v", query, len(entries), len(recs), entries)
		return
	}
	for i, r := range recs {
		e := entries[i]
		want := r.JournalFields()
		want["MESSAGE"] = r.Message()
		want["PRIORITY"] = strconv.Itoa(int(r.Priority()))
		for field, value := range want {
			if got := journalValue(e[field]); got != value {
				t.Errorf("journalctl %s entry %d: %s = %q, want %q", query, i, field, got, value)
			}
		}
		for field := range e {
			if _, ok := want[field]; !ok && !strings.HasPrefix(field, "_") {
				t.Errorf("journalctl %s entry %d: unexpected field %s=%v", query, i, field, e[field])
			}
		}
		if got := journalValue(e["_TRANSPORT"]); got != "journal" {
			t.Errorf("journalctl %s entry %d: _TRANSPORT=%q, want journal (native protocol)", query, i, got)
		}
		unit := journalValue(e["_SYSTEMD_UNIT"])
		if inUnit != (unit == "captrace.service") {
			t.Errorf("journalctl %s entry %d: _SYSTEMD_UNIT=%q", query, i, unit)
		}
	}
}

// journalValue reads a journalctl JSON value: a string, or an array of bytes
// for values that are not printable UTF-8.
func journalValue(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []any:
		var b []byte
		for _, x := range v {
			n, ok := x.(float64)
			if !ok {
				return fmt.Sprint(v)
			}
			b = append(b, byte(n))
		}
		return string(b)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// makeUnitCgroup creates <cgroup2>/system.slice/captrace.service (and
// system.slice if missing) and removes what it created at the end. An
// existing one (another test, a real service) is used and left in place.
func makeUnitCgroup(t *testing.T) string {
	t.Helper()
	root, err := cgmap.FindCgroup2Mount()
	if err != nil {
		privtest.Lacks(t, "a cgroup2 mount: "+err.Error())
	}
	unit := filepath.Join(root, "system.slice", "captrace.service")
	for _, dir := range []string{filepath.Dir(unit), unit} {
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, os.ErrExist) {
			t.Logf("using the existing cgroup %s", dir)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rmdirCgroup(t, dir) })
	}
	return unit
}

func rmdirCgroup(t *testing.T, dir string) {
	// A cgroup becomes removable a moment after its last process exits.
	var err error
	for range 50 {
		if err = syscall.Rmdir(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("remove cgroup %s: %v", dir, err)
}

// namespaceHelper runs inside the private mount namespace and prints the
// journalctl results as JSON on stdout.
func namespaceHelper() (err error) {
	stop, err := startPrivateJournald()
	if err != nil {
		return err
	}
	defer func() { err = stop(err) }()

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	writer := func(pod string, cgroupDir string) error {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), helperEnv+"=writer", helperPodEnv+"="+pod)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if cgroupDir != "" {
			// clone3 places the writer in the unit's cgroup before it runs.
			fd, err := syscall.Open(cgroupDir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
			if err != nil {
				return err
			}
			defer syscall.Close(fd)
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("writer %s: %w\n%s", pod, err, out)
		}
		return nil
	}
	if err := writer("web-0", ""); err != nil {
		return err
	}
	if err := writer("web-1", os.Getenv(helperUnitEnv)); err != nil {
		return err
	}

	results := map[string][]map[string]any{}
	for name, args := range map[string][]string{
		"pod":    {"K8S_POD_NAME=web-0"},
		"unit":   {"-u", "captrace"},
		"recipe": {"-u", "captrace", "K8S_POD_NAME=web-1", "CAP=" + bpf.Capability(21).String()},
	} {
		entries, err := journalctl(args...)
		if err != nil {
			return err
		}
		results[name] = entries
	}
	return json.NewEncoder(os.Stdout).Encode(results)
}

// writerHelper writes pod's records through the journald sink behind a
// fanout, as the daemon does, and waits until journald stored them.
func writerHelper(pod string) error {
	recs := journalTestRecords(pod)
	f := NewFanout([]Sink{NewJournald()}, 16, NewLogger(os.Stderr, logrus.WarnLevel))
	for i := range recs {
		f.Send(&recs[i])
	}
	if err := f.Close(context.Background()); err != nil {
		return err
	}
	if st := f.Stats()[0]; st.Written != uint64(len(recs)) {
		return fmt.Errorf("journald sink stats %+v, want %d written", st, len(recs))
	}
	return waitUntil(10*time.Second, func() bool {
		entries, err := journalctl("K8S_POD_NAME=" + pod)
		return err == nil && len(entries) == len(recs)
	})
}

func journalctl(args ...string) ([]map[string]any, error) {
	cmd := exec.Command("journalctl", append([]string{"--no-pager", "-o", "json"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return nil, fmt.Errorf("journalctl %v: %w: %s", args, err, stderr)
	}
	var entries []map[string]any
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var e map[string]any
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("journalctl %v output: %w", args, err)
		}
		entries = append(entries, e)
	}
	return entries, nil
}

func waitUntil(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
