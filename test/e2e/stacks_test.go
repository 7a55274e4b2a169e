//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privilege"
	"github.com/captrace/captrace/pkg/schema"
	"github.com/captrace/captrace/test/e2e/stack"
)

// stacksImage holds busybox plus two one-shot programs that call setpriority
// from named functions: a static C binary (ELF symbols, build ID) and a Go
// binary (symbols via its tables; the kernel cannot read Go's build ID, so
// its frames resolve by the executable's device and inode).
const stacksImage = "localhost/captrace-e2e/stacks:1"

const stackProbeC = `#include <sys/resource.h>
__attribute__((noinline)) int do_renice(void) { return setpriority(PRIO_PROCESS, 0, -1); }
__attribute__((noinline)) int renice_me(void) { int r = do_renice(); __asm__ volatile(""); return r; }
int main(void) { renice_me(); return 0; }
`

const stackProbeGo = `package main

import "syscall"

//go:noinline
func doNice() error { return syscall.Setpriority(syscall.PRIO_PROCESS, 0, -1) }

func main() { doNice() }
`

// importStacksImage builds the two programs in a temp dir, imports the image
// and removes the dir: the host keeps no copy, so a frame can only resolve
// through the container's root.
func importStacksImage(t *testing.T, ctx context.Context) {
	t.Helper()
	dir, err := os.MkdirTemp("", "captrace-e2e-stacks-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	build := func(what string, cmd *exec.Cmd) {
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s (needs cc and libc6-dev for -static): %v\n%s", what, err, out)
		}
	}
	cc := exec.Command("cc", "-static", "-O1", "-fno-omit-frame-pointer", "-o", filepath.Join(dir, "nice-c"), write("nice.c", stackProbeC))
	build("nice-c", cc)
	write("main.go", stackProbeGo)
	write("go.mod", "module nicego\ngo 1.21\n")
	// Stripped of its ELF symbols: its frames are named from the pclntab by debug/gosym.
	gob := exec.Command("go", "build", "-ldflags=-s -w", "-o", filepath.Join(dir, "nice-go"), ".")
	gob.Dir = dir
	gob.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	build("nice-go", gob)
	extra := map[string][]byte{}
	for _, name := range []string{"nice-c", "nice-go"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		extra[name] = b
	}
	importBusyboxImage(t, ctx, stacksImage, extra, []string{"/bin/sh"})
}

// importBusyboxImage imports ref into the stack: busybox plus the extra
// executables in /bin (name → content), running entrypoint.
func importBusyboxImage(t *testing.T, ctx context.Context, ref string, extra map[string][]byte, entrypoint []string) {
	t.Helper()
	layer, err := stack.BusyboxLayerWith(extra)
	if err != nil {
		t.Fatal(err)
	}
	archive, err := stack.OCIArchive(ref, layer, entrypoint)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "image.tar")
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Ctr(ctx, "images", "import", "--platform", "linux/amd64", path); err != nil {
		t.Fatal(st.Fail("import the image "+ref, err))
	}
}

// stacksDaemon runs a second captrace on the stack's NRI socket, confined
// like the unit but with privilege.UserStacks added (CAP_SYS_PTRACE), its
// events in its own logfmt file. It stops when the test ends.
func stacksDaemon(t *testing.T) (eventFile string) {
	t.Helper()
	dir := t.TempDir()
	eventFile = filepath.Join(dir, "events.logfmt")
	cfg := filepath.Join(dir, "captrace.toml")
	conf := fmt.Sprintf("[nri]\nsocket = %q\nplugin_name = \"captrace-stacks\"\nplugin_index = \"11\"\n[output]\nsinks = [\"file\"]\nfile = %q\n", st.NRISocket(), eventFile)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	set := privilege.SetprivBoundingSet() + ",+" + strings.ToLower(strings.TrimPrefix(privilege.UserStacks.Name, "CAP_"))
	cmd := exec.Command(st.Tools.Setpriv, "--bounding-set", set, "--inh-caps", "-all", "--ambient-caps", "-all", "--no-new-privs", "--",
		st.CaptraceBin(), "--config", cfg)
	logPath := filepath.Join(dir, "captrace.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logFile.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "synchronized with containerd") {
			return eventFile
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second captrace did not connect to NRI:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fileEvents reads the logfmt events of pod from file.
func fileEvents(t *testing.T, file, pod string) []map[string]string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []map[string]string
	for _, line := range strings.Split(string(b), "\n") {
		kv, err := stack.ParseLogfmt(line)
		if err == nil && kv[schema.Msg.Key] == schema.EventMessage && kv[schema.Pod.Key] == pod {
			out = append(out, kv)
		}
	}
	return out
}

// TestStacksThroughContainerRoot: a pod with captrace.io/stacks runs two
// one-shot programs from its image. Each check's kernel stack holds the
// setpriority syscall path. The daemon confined to privilege.Required names
// no user frames and says so once for the pod; a daemon that also holds
// privilege.UserStacks names the function that called setpriority in each
// program, resolved after the program exited, through the container's root
// (the files exist nowhere else).
func TestStacksThroughContainerRoot(t *testing.T) {
	ctx := testCtx(t)
	importStacksImage(t, ctx)
	withPtrace := stacksDaemon(t)
	pod := runPod(t, ctx, stack.Pod{Name: "stacks", Namespace: "default", Annotations: stack.Annotated("captrace.io/stacks=kernel,user")})
	id := runContainer(t, ctx, pod, stack.Container{Name: "stacks", Image: stacksImage,
		Command: []string{"/bin/sh", "-c", "while true; do /bin/nice-c; /bin/nice-go; sleep 1; done"}})

	for _, tc := range []struct{ comm, frame string }{
		{"nice-c", "renice_me+"},
		{"nice-go", "main.doNice+"},
	} {
		keep := func(e stack.Event) bool {
			return stack.OfPod("default", "stacks")(e) && e.Comm == tc.comm && e.Cap == "CAP_SYS_NICE"
		}
		b := waitEvents(t, ctx, 60*time.Second, 2, keep, "two CAP_SYS_NICE checks of "+tc.comm)
		for _, evs := range [][]stack.Event{b.Logfmt, b.Journal} {
			for _, e := range evs {
				if !strings.Contains(e.KStack, "sys_setpriority+") || !strings.HasPrefix(e.KStack, "security_capable+") {
					t.Errorf("%s %s: kernel stack %q lacks the setpriority path", e.Source, tc.comm, e.KStack)
				}
				if e.UStack != "" {
					t.Errorf("%s %s: user stack %q from a daemon without %s", e.Source, tc.comm, e.UStack, privilege.UserStacks.Name)
				}
			}
		}
		// The daemon with CAP_SYS_PTRACE names the code.
		var named map[string]string
		deadline := time.Now().Add(30 * time.Second)
		for named == nil && time.Now().Before(deadline) {
			for _, kv := range fileEvents(t, withPtrace, "stacks") {
				if kv[schema.Comm.Key] == tc.comm && kv[schema.Cap.Key] == "CAP_SYS_NICE" {
					named = kv
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		if named == nil {
			t.Fatalf("the daemon with %s wrote no CAP_SYS_NICE check of %s", privilege.UserStacks.Name, tc.comm)
		}
		if !strings.Contains(named[schema.UserStack.Key], tc.frame) || !strings.Contains(named[schema.KernelStack.Key], "sys_setpriority+") {
			t.Errorf("%s with %s: ustack %q (want %s), kstack %q", tc.comm, privilege.UserStacks.Name, named[schema.UserStack.Key], tc.frame, named[schema.KernelStack.Key])
		}
		t.Logf("%s: kstack=%q ustack=%q", tc.comm, named[schema.KernelStack.Key], named[schema.UserStack.Key])
	}
	// One warning, naming the pod and the capability.
	logs, _ := os.ReadFile(st.CaptraceLog())
	warned := 0
	for _, line := range strings.Split(string(logs), "\n") {
		if strings.Contains(line, "level=warning") && strings.Contains(line, "pod=stacks") && strings.Contains(line, "lacks "+privilege.UserStacks.Name) {
			warned++
		}
	}
	if warned != 1 {
		t.Errorf("%d warnings about the pod's user stacks in %s, want 1", warned, st.CaptraceLog())
	}

	// The summary names the code behind the denied SYS_NICE, and so does
	// captrace report over its events.
	if err := st.RemoveContainer(ctx, id); err != nil {
		t.Fatal(st.Fail("stop and remove the stacks container", err))
	}
	var summary map[string]string
	deadline := time.Now().Add(30 * time.Second)
	for summary == nil && time.Now().Before(deadline) {
		b, _ := os.ReadFile(withPtrace)
		for _, line := range strings.Split(string(b), "\n") {
			if kv, err := stack.ParseLogfmt(line); err == nil && kv[schema.Summary.Key] == "true" && kv[schema.Pod.Key] == "stacks" {
				summary = kv
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	code := summary[schema.Code.Key]
	if !strings.HasPrefix(code, "SYS_NICE ← ") || !(strings.Contains(code, "renice_me") || strings.Contains(code, "main.doNice")) {
		t.Errorf("summary code %q (summary %v): want the code behind SYS_NICE named", code, summary)
	}
	out, errOut, err := st.Report(ctx, "--input", withPtrace, "--namespace", "default", "--pod", "stacks")
	if err != nil {
		t.Fatal(st.Fail("captrace report", err))
	}
	if !strings.Contains(out, "code that asked (user stacks):\n  SYS_NICE ← ") {
		t.Errorf("captrace report does not name the code:\n%s\nstderr: %s", out, errOut)
	}

	// A pod without the annotation gets no stack fields.
	plain := runPod(t, ctx, stack.Pod{Name: "no-stacks", Namespace: "default", Annotations: stack.Annotated()})
	runContainer(t, ctx, plain, stack.Container{Name: "no-stacks", Image: stacksImage,
		Command: []string{"/bin/sh", "-c", "while true; do /bin/nice-c; sleep 1; done"}})
	keep := func(e stack.Event) bool { return stack.OfPod("default", "no-stacks")(e) && e.Comm == "nice-c" }
	b := waitEvents(t, ctx, 60*time.Second, 1, keep, "a check of nice-c without stacks")
	for _, e := range append(b.Logfmt, b.Journal...) {
		if e.KStack != "" || e.UStack != "" {
			t.Errorf("%s: stacks without the annotation: %q %q", e.Source, e.KStack, e.UStack)
		}
	}
}
