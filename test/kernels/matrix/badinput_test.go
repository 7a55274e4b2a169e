package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privtest"
)

// A kernel package apt cannot download is an infrastructure error: the
// column fails, and the report names the package and apt's log. A local
// file: repository stands in for the archive (no network).
func TestUndownloadablePackageIsInfraError(t *testing.T) {
	privtest.Root(t) // apt-get update writes its lists as root
	if _, err := exec.LookPath("apt-get"); err != nil {
		privtest.Lacks(t, "apt-get")
	}
	cache := t.TempDir()
	repo := filepath.Join(cache, "repo")
	os.MkdirAll(repo, 0o755)
	if err := os.WriteFile(filepath.Join(repo, "Packages"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(cache, "logs"), 0o755)
	apt, err := newAptRepoWith(cache, "deb [trusted=yes] file:"+repo+" ./\n")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, want := range []string{"linux-image-0.0.0-1-cloud-amd64", "6.1"} {
		spec, err := parseKernelSpec(want)
		if err != nil {
			t.Fatal(err)
		}
		k := fetchKernel(ctx, cache, apt, spec)
		if k.Err == nil {
			t.Fatalf("%s: fetched from an empty repository", want)
		}
		if !strings.Contains(k.Err.Error(), want) {
			t.Errorf("%s: error does not name it: %v", want, k.Err)
		}
		if log, err := os.ReadFile(k.FetchLog); err != nil || !strings.Contains(string(log), k.Err.Error()) {
			t.Errorf("%s: fetch log %s lacks the error (%v):\n%s", want, k.FetchLog, err, log)
		}
		c := &column{Label: k.Label + "/probe", Kernel: k, Infra: k.Err, LogPath: k.FetchLog}
		var out bytes.Buffer
		if !report(&out, []*column{c}, []kernel{k}) {
			t.Fatalf("%s: report passed an infrastructure error", want)
		}
		for _, s := range []string{"INFRA", "INFRASTRUCTURE ERROR", k.FetchLog, want} {
			if !strings.Contains(out.String(), s) {
				t.Errorf("%s: report lacks %q:\n%s", want, s, out.String())
			}
		}
	}
}

// A guest that never reaches /init (here: qemu given a file that is no
// kernel) is killed at the boot timeout or ends by itself; either way the
// column is an infrastructure error naming the package and its serial log.
func TestUnbootedGuestIsInfraError(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		privtest.Lacks(t, "qemu-system-x86_64 (scripts/install-deps.sh test)")
	}
	dir := t.TempDir()
	vmlinuz := filepath.Join(dir, "vmlinuz")
	os.WriteFile(vmlinuz, bytes.Repeat([]byte{0x90}, 1<<16), 0o644)
	initrd := filepath.Join(dir, "initrd")
	os.WriteFile(initrd, nil, 0o644)
	c := &column{Label: "9.9-x/probe", Kernel: kernel{Package: "linux-image-9.9-x-cloud-amd64", Spec: kernelSpec{Arch: "amd64"}},
		LogPath: filepath.Join(dir, "serial.log")}
	c.Took, c.RunErr = boot(context.Background(), "amd64", vmlinuz, initrd, c.LogPath, nil, 10*time.Second, time.Minute, &c.state)
	c.finish([]string{"bpf"})
	if c.Infra == nil || !strings.Contains(c.Infra.Error(), "linux-image-9.9-x-cloud-amd64 did not boot") {
		t.Fatalf("infra = %v (run error %v)", c.Infra, c.RunErr)
	}
	var out bytes.Buffer
	if !report(&out, []*column{c}, nil) {
		t.Fatal("report passed a guest that never booted")
	}
	for _, s := range []string{"INFRASTRUCTURE ERROR", c.LogPath, "linux-image-9.9-x-cloud-amd64", "last 40 lines"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
	t.Logf("took %.1fs, run error: %v", c.Took.Seconds(), c.RunErr)
}

// qemu's exit status proves nothing: a log that booted and ran tests but
// lacks the exit and done markers fails.
func TestBootedLogWithoutMarkersFails(t *testing.T) {
	log := "CAPTRACE-KERNELS-BOOTED kernel=7.2.13\nCAPTRACE-KERNELS-BEGIN bpf\n=== RUN   TestA\n--- PASS: TestA (0.01s)\nPASS\n"
	dir := t.TempDir()
	c := &column{Label: "7.2.13/probe", LogPath: filepath.Join(dir, "serial.log")}
	os.WriteFile(c.LogPath, []byte(log), 0o644)
	c.finish([]string{"bpf"})
	if c.Infra != nil || !c.failed() {
		t.Fatalf("infra %v, failed %v: want a test failure", c.Infra, c.failed())
	}
}

// A guest that hangs before /init (qemu-system-aarch64 runs the junk as
// code and never prints) is killed at the boot timeout, not at the long
// per-boot timeout.
func TestHungGuestKilledAtBootTimeout(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-aarch64"); err != nil {
		privtest.Lacks(t, "qemu-system-aarch64 (scripts/install-deps.sh test)")
	}
	dir := t.TempDir()
	vmlinuz := filepath.Join(dir, "Image")
	os.WriteFile(vmlinuz, make([]byte, 1<<16), 0o644)
	initrd := filepath.Join(dir, "initrd")
	os.WriteFile(initrd, nil, 0o644)
	c := &column{Label: "9.9-arm64/probe", Kernel: kernel{Package: "linux-image-9.9-cloud-arm64", Spec: kernelSpec{Arch: "arm64"}},
		LogPath: filepath.Join(dir, "serial.log")}
	c.Took, c.RunErr = boot(context.Background(), "arm64", vmlinuz, initrd, c.LogPath, nil, 3*time.Second, 5*time.Minute, &c.state)
	if c.RunErr == nil || !strings.Contains(c.RunErr.Error(), "did not reach /init within 3s") || c.Took > time.Minute {
		t.Fatalf("run error %v after %s: want the boot timeout", c.RunErr, c.Took)
	}
	c.finish([]string{"bpf"})
	if c.Infra == nil || !strings.Contains(c.Infra.Error(), "did not reach /init within 3s") {
		t.Fatalf("infra = %v", c.Infra)
	}
	if log, _ := os.ReadFile(c.LogPath); !strings.Contains(string(log), "qemu killed") {
		t.Errorf("serial log does not say qemu was killed:\n%s", log)
	}
}
