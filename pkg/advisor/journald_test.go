package advisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/captrace/captrace/internal/privtest"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/schema"
)

// journalWriterEnv makes the test binary a journal writer (see TestMain): it
// sends the entries of the JSON file the variable names to journald, then
// waits for `journalctl --sync`, so it is alive while journald reads its
// cgroup (which gives _SYSTEMD_UNIT).
const journalWriterEnv = "CAPTRACE_ADVISOR_JOURNAL_WRITER"

func TestMain(m *testing.M) {
	if os.Getenv(reportChildEnv) != "" {
		os.Exit(runReportChild())
	}
	if path := os.Getenv(journalWriterEnv); path != "" {
		if err := writeJournal(path); err != nil {
			fmt.Fprintln(os.Stderr, "journal writer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func writeJournal(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var entries []map[string]string
	if err := json.Unmarshal(b, &entries); err != nil {
		return err
	}
	for _, e := range entries {
		msg := e["MESSAGE"]
		delete(e, "MESSAGE")
		if err := journal.Send(msg, journal.PriInfo, e); err != nil {
			return err
		}
	}
	out, err := exec.Command("journalctl", "--sync").CombinedOutput()
	if err != nil {
		return fmt.Errorf("journalctl --sync: %v: %s", err, out)
	}
	return nil
}

// cgroup2Root is where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on a
// pure v2 host, /sys/fs/cgroup/unified on a hybrid one (this project's VMs).
func cgroup2Root(t *testing.T) string {
	mount, err := cgmap.FindCgroup2Mount()
	if err != nil {
		privtest.Lacks(t, "a cgroup v2 hierarchy: "+err.Error())
	}
	return mount
}

// TestReportReadsRealJournal writes captrace entries into a real journald as
// a process of a systemd unit's cgroup, and reads them back with the real
// journalctl through `captrace report -D DIR --unit UNIT`. journald runs
// standalone in private mount and PID namespaces with tmpfs over its
// directories, so the host's journal is untouched and nothing outlives the test.
func TestReportReadsRealJournal(t *testing.T) {
	privtest.Root(t)
	const journald = "/lib/systemd/systemd-journald"
	for _, bin := range []string{journald, "journalctl", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			privtest.Lacks(t, bin+" (apt-get install systemd util-linux)")
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dest := filepath.Join(dir, "journal")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}

	// A cgroup of our own that journald maps to a unit name.
	unit := fmt.Sprintf("captrace-advisortest-%d", os.Getpid())
	slice := filepath.Join(cgroup2Root(t), unit+".slice")
	cg := filepath.Join(slice, unit+".service")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range []string{cg, slice} {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cleanup: %v", err)
			}
		}
	})

	// The seed's two pods, a summary entry, and a daemon log line.
	var entries []map[string]string
	for _, r := range append(setPriority0(), setPriority1()...) {
		entries = append(entries, map[string]string{
			"MESSAGE":                "capability check",
			schema.Namespace.Journal: r.ns, schema.Pod.Journal: r.pod, schema.PodUID.Journal: "uid-" + r.pod,
			schema.Container.Journal: r.container, schema.ContainerID.Journal: r.id, schema.Comm.Journal: r.comm,
			schema.Pid.Journal: "1234", schema.Tid.Journal: "1234", schema.Uid.Journal: "0", schema.Gid.Journal: "0",
			schema.Cap.Journal: r.cap, schema.Capable.Journal: fmt.Sprint(r.capable), schema.Audit.Journal: fmt.Sprint(r.audit),
			schema.Insetid.Journal: "false", schema.Syscall.Journal: r.syscall, schema.Time.Journal: r.at.Format(time.RFC3339Nano),
			schema.SyslogIdentifier.Journal: schema.Identifier,
		})
	}
	tr := NewTracker(Limits{})
	c := container("set-priority-1")
	c.ID = "c1"
	tr.Start(c, t0.Add(-time.Minute))
	sum, _ := tr.Finish(c.ID, t0.Add(time.Minute))
	sumFields := sum.JournalFields()
	sumFields["MESSAGE"] = sum.Message()
	entries = append(entries, sumFields,
		map[string]string{"MESSAGE": "stats", schema.SyslogIdentifier.Journal: schema.Identifier, "TRACED": "2"})
	entriesFile := filepath.Join(dir, "entries.json")
	b, _ := json.Marshal(entries)
	if err := os.WriteFile(entriesFile, b, 0o600); err != nil {
		t.Fatal(err)
	}

	script := `set -e
mount -t tmpfs tmpfs /run/systemd
mount -t tmpfs tmpfs /run/log
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
"$JOURNALD" & jp=$!
trap 'kill $jp 2>/dev/null || true' EXIT
i=0; while [ ! -S /run/systemd/journal/socket ]; do i=$((i+1)); [ $i -lt 100 ] || { kill $jp; exit 1; }; sleep 0.05; done
printf '%s\n' "$FORGED" | setpriv --reuid=65534 --regid=65534 --clear-groups logger --journald || { kill $jp; exit 1; }
sh -c 'echo $$ > "$CG/cgroup.procs" && exec "$SELF"' || { kill $jp; exit 1; }
kill -TERM $jp; wait $jp || true
cp -a /run/log/journal/. "$DEST"/
`
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A PID namespace too: journald and the writer die with unshare, whatever happens.
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private",
		"--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", script)
	// Any local user can write an entry that claims to be captrace's
	// (logger -t captrace): one by nobody, with a need captrace never saw.
	var forgedLines []string
	for k, v := range map[string]string{
		"MESSAGE": "capability check", schema.SyslogIdentifier.Journal: schema.Identifier,
		schema.Namespace.Journal: "default", schema.Pod.Journal: "forged", schema.PodUID.Journal: "uid-forged",
		schema.Container.Journal: "forged", schema.ContainerID.Journal: "forged", schema.Comm.Journal: "sh",
		schema.Pid.Journal: "1", schema.Tid.Journal: "1", schema.Uid.Journal: "0", schema.Gid.Journal: "0",
		schema.Cap.Journal: "CAP_SYS_ADMIN", schema.Capable.Journal: "true", schema.Audit.Journal: "true",
		schema.Insetid.Journal: "false", schema.Syscall.Journal: "SYS_MOUNT", schema.Time.Journal: t0.Format(time.RFC3339Nano),
	} {
		forgedLines = append(forgedLines, k+"="+v)
	}
	forged := strings.Join(forgedLines, "\n")
	cmd.Env = append(os.Environ(), "JOURNALD="+journald, "CG="+cg, "SELF="+self, "DEST="+dest,
		journalWriterEnv+"="+entriesFile, "FORGED="+forged)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("journald in a private mount namespace: %v\n%s", err, out)
	}

	var stdout, stderr bytes.Buffer
	code := RunReport([]string{"-D", dest, "--unit", unit, "--format", "json"}, strings.NewReader(""), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("captrace report: exit %d\n%s", code, stderr.String())
	}
	cs := decodeJSONReport(t, stdout.String())
	if len(cs) != 2 {
		t.Fatalf("%d containers, want 2: %s", len(cs), stdout.String())
	}
	if p0 := cs[0]; p0.Container.Pod != "set-priority-0" || len(p0.Recommended.Add) != 0 ||
		fmt.Sprint(p0.DeniedOnly) != "[SYS_NICE]" || p0.Window.Events != 12 {
		t.Errorf("set-priority-0: %+v", p0.Summary)
	}
	if p1 := cs[1]; fmt.Sprint(p1.Recommended) != "{[ALL] [SYS_NICE]}" || p1.Window.Events != 9 ||
		!p1.Window.Start.Equal(t0.Add(-time.Minute)) {
		t.Errorf("set-priority-1: %+v", p1.Summary)
	}
	if want := "read 23 lines from journalctl -o json --no-pager -u " + unit + " -D " + dest +
		": 21 capability checks, 1 summary entries, 1 other records ignored"; !strings.HasPrefix(stderr.String(), "captrace report: "+want) {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
	// Without a unit, entries are matched by SYSLOG_IDENTIFIER, and only
	// root's: the forged one is not read.
	stdout.Reset()
	stderr.Reset()
	if code := RunReport([]string{"-D", dest, "--unit", "", "--format", "json"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("captrace report --unit '': exit %d\n%s", code, stderr.String())
	}
	if cs := decodeJSONReport(t, stdout.String()); len(cs) != 2 || strings.Contains(stdout.String(), "forged") {
		t.Errorf("--unit '': %d containers, want the 2 captrace wrote and not the forged one: %s", len(cs), stdout.String())
	}
	if want := "SYSLOG_IDENTIFIER=captrace _UID=0 -D " + dest + ": 21 capability checks"; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}
