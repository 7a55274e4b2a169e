// Command demo plays the seed's set-priority guide on a private containerd
// with captrace connected: `make demo`. It prints captrace's lines as they
// come and the journalctl command that queries them, and tears everything
// down on Ctrl-C or after -duration.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

func main() {
	duration := flag.Duration("duration", 60*time.Second, "how long to play the demo before tearing it down (Ctrl-C ends it earlier)")
	period := flag.Duration("period", 5*time.Second, "pause between two priority raises in each pod (the seed's sleep 5)")
	captraceBin := flag.String("captrace", "", "a prebuilt captrace daemon (default: go build ./cmd/captrace)")
	all := flag.Bool("all", false, "trace non-audited checks too (memory accounting's CAP_SYS_ADMIN on every exec and brk); default: the pods ask for captrace.io/audit-only=true")
	raw := flag.Bool("raw", false, "print captrace's logfmt lines as they are instead of a table")
	flag.Parse()
	if err := run(*duration, *period, *captraceBin, *all, *raw); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Printf("demo | "+format+"\n", args...)
}

func run(duration, period time.Duration, captraceBin string, all, raw bool) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo runs containerd, runc and an eBPF program: run it as root (sudo make demo)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	say("setting up a private containerd %s + runc + NRI + journald + captrace (first run builds containerd: ~1-2 min)", stack.ContainerdVersion)
	t0 := time.Now()
	s, err := stack.New(ctx, stack.Options{CaptraceBin: captraceBin, Logf: say})
	if err != nil {
		return err
	}
	defer func() {
		say("tearing down (pods, captrace, containerd, journald, mounts, cgroups, %s)", s.Dir)
		s.Stop()
		say("done")
	}()
	say("stack up in %v under %s", time.Since(t0).Round(100*time.Millisecond), s.Dir)

	var ids []string
	loop := []string{"/bin/sh", "-c", fmt.Sprintf("while /bin/true; do sh -c 'renice -n -20 $$'; sleep %g; done", period.Seconds())}
	for _, p := range []struct {
		name string
		add  []string
		drop []string
		note string
	}{
		{"set-priority-0", nil, nil, "default capabilities: renice is denied CAP_SYS_NICE"},
		{"set-priority-1", []string{"SYS_NICE"}, []string{"ALL"}, "capabilities add [SYS_NICE], drop [ALL]: renice is allowed"},
	} {
		annotations := stack.Annotated("captrace.io/audit-only=true")
		if all {
			annotations = stack.Annotated()
		}
		pod, err := s.RunPod(ctx, stack.Pod{Name: p.name, Namespace: "default", Annotations: annotations})
		if err != nil {
			return s.Fail("run pod "+p.name, err)
		}
		id, err := s.RunContainer(ctx, pod, stack.Container{Name: p.name, Command: loop, CapAdd: p.add, CapDrop: p.drop})
		if err != nil {
			return s.Fail("run container "+p.name, err)
		}
		ids = append(ids, id)
		var kv []string
		for k, v := range annotations {
			kv = append(kv, k+"="+v)
		}
		sort.Strings(kv)
		say("pod default/%s (%s): %s", p.name, strings.Join(kv, ", "), p.note)
	}

	say("")
	say("query captrace's journal from another shell while the demo runs:")
	say("  %s", strings.Join(s.JournalctlArgs("-u", "captrace", "-f"), " "))
	say("  %s", strings.Join(s.JournalctlArgs("-u", "captrace", "K8S_POD_NAME=set-priority-0", "-o", "json-pretty"), " "))
	say("  (or inside its mount namespace, as journalctl normally runs: nsenter --mount=/proc/%d/ns/mnt journalctl -u captrace -f)", s.HolderPID())
	say("captrace's logfmt file: %s; its own log: %s", s.EventFile, s.CaptraceLog())
	say("stopping after %v, or on Ctrl-C", duration)
	say("")

	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	lines, err := follow(ctx, s.EventFile, raw)
	if err != nil {
		return err
	}
	say("captrace reported %d capability checks", lines)
	return advice(s, ids)
}

// advice stops the pods' containers (captrace writes their summaries) and
// prints `captrace report` over the journal: the seed's conclusion.
func advice(s *stack.Stack, ids []string) error {
	// A fresh context: the demo's may have ended with Ctrl-C.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	say("")
	say("stopping the containers; captrace summarizes each")
	for _, id := range ids {
		if err := s.RemoveContainer(ctx, id); err != nil {
			return s.Fail("stop container "+id, err)
		}
		if _, err := s.WaitSummaries(ctx, 15*time.Second, id); err != nil {
			return s.Fail("summary of container "+id, err)
		}
	}
	args := []string{"-D", s.JournalDir, "--namespace", "default"}
	say("the advice: captrace report %s", strings.Join(args, " "))
	say("")
	out, _, err := s.Report(ctx, args...)
	if err != nil {
		return err
	}
	fmt.Print(out)
	say("")
	// The seed's conclusion, checked: set-priority-1 needs exactly SYS_NICE;
	// set-priority-0 was denied it, which is listed apart, not added.
	js, _, err := s.Report(ctx, append(args, "--format", "json")...)
	if err != nil {
		return err
	}
	var rep struct {
		Containers []struct {
			Container struct {
				Name string `json:"container"`
			} `json:"container"`
			Recommended struct {
				Drop []string `json:"drop"`
				Add  []string `json:"add"`
			} `json:"recommended"`
			DeniedOnly []string `json:"denied_only"`
		} `json:"containers"`
	}
	if err := json.Unmarshal([]byte(js), &rep); err != nil {
		return fmt.Errorf("captrace report --format json: %w", err)
	}
	got := map[string]string{}
	for _, c := range rep.Containers {
		got[c.Container.Name] = fmt.Sprintf("drop %v add %v denied %v", c.Recommended.Drop, c.Recommended.Add, c.DeniedOnly)
	}
	want := map[string]string{"set-priority-1": "drop [ALL] add [SYS_NICE] denied []", "set-priority-0": "drop [ALL] add [] denied [SYS_NICE]"}
	for name, w := range want {
		if got[name] != w {
			return fmt.Errorf("advice for %s: %s, want %s", name, got[name], w)
		}
		say("%s: %s, as the seed concludes", name, w)
	}
	return nil
}

const rowFormat = "%-10s %-15s %-15s %-8s %7s %-7s %-5s %-14s %-16s %s\n"

// printLine prints one of captrace's lines, as a row of the seed's table unless raw.
func printLine(line string, raw bool) {
	e, ok, err := stack.ParseEventLine(strings.TrimRight(line, "\n"))
	if raw || err != nil || !ok {
		fmt.Print(line)
		return
	}
	audit := "0"
	if e.Audit {
		audit = "1"
	}
	fmt.Printf(rowFormat, e.Namespace, e.Pod, e.Container, e.Comm, fmt.Sprint(e.Pid), fmt.Sprint(e.Capable), audit, e.Cap, e.Syscall, e.Time.Local().Format("15:04:05.000000"))
}

// follow prints lines appended to path until ctx ends and returns how many it printed.
func follow(ctx context.Context, path string, raw bool) (int, error) {
	if !raw {
		fmt.Printf(rowFormat, "NAMESPACE", "POD", "CONTAINER", "COMM", "PID", "CAPABLE", "AUDIT", "CAP", "SYSCALL", "TIME")
	}
	var f *os.File
	for f == nil {
		var err error
		if f, err = os.Open(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		if f == nil {
			select {
			case <-ctx.Done():
				return 0, nil
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	defer f.Close()
	r := bufio.NewReader(f)
	n := 0
	partial := ""
	for {
		line, err := r.ReadString('\n')
		partial += line
		if err == nil {
			printLine(partial, raw)
			partial = ""
			n++
			continue
		}
		if err != io.EOF {
			return n, err
		}
		select {
		case <-ctx.Done():
			return n, nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
