//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	layer, err := stack.BusyboxLayerWith(extra)
	if err != nil {
		t.Fatal(err)
	}
	archive, err := stack.OCIArchive(stacksImage, layer, []string{"/bin/sh"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "stacks.tar")
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Ctr(ctx, "images", "import", "--platform", "linux/amd64", path); err != nil {
		t.Fatal(st.Fail("import the stacks image", err))
	}
}

// TestStacksThroughContainerRoot: a pod with captrace.io/stacks runs two
// one-shot programs from its image. Each check's kernel stack holds the
// setpriority syscall path and its user stack names the function that
// called it, resolved after the program exited, through the container's
// root (the files exist nowhere else).
func TestStacksThroughContainerRoot(t *testing.T) {
	ctx := testCtx(t)
	importStacksImage(t, ctx)
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
				if !strings.Contains(e.UStack, tc.frame) {
					t.Errorf("%s %s: user stack %q lacks %s", e.Source, tc.comm, e.UStack, tc.frame)
				}
			}
		}
		t.Logf("%s: kstack=%q ustack=%q", tc.comm, b.Logfmt[0].KStack, b.Logfmt[0].UStack)
	}

	// The summary names the code behind the denied SYS_NICE, and so does
	// captrace report over the journal.
	if err := st.RemoveContainer(ctx, id); err != nil {
		t.Fatal(st.Fail("stop and remove the stacks container", err))
	}
	sums, err := st.WaitSummaries(ctx, 10*time.Second, id)
	if err != nil {
		t.Fatal(st.Fail("wait for the summary of the stacks container", err))
	}
	named := func(code string) bool {
		return strings.HasPrefix(code, "SYS_NICE ← ") && (strings.Contains(code, "renice_me") || strings.Contains(code, "main.doNice"))
	}
	for _, s := range append(sums.Logfmt, sums.Journal...) {
		if !named(s.Code) || !strings.Contains(s.Message, "code: SYS_NICE ← ") {
			t.Errorf("%s summary: code %q, message %q: want the code behind SYS_NICE named", s.Source, s.Code, s.Message)
		}
	}
	out, errOut, err := st.Report(ctx, "-D", st.JournalDir, "--namespace", "default", "--pod", "stacks")
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
