package cgmap

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privtest"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// TestResolverMatchesKernel shows that what the resolver returns for a real
// process in a real cgroup, from its PID and from its cgroups path in either
// form, is the ID the kernel's bpf_get_current_cgroup_id() reports for that
// process: the key of the tracer's filter map.
func TestResolverMatchesKernel(t *testing.T) {
	privtest.Root(t)
	r, err := NewResolver()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cgroup2 mount %s (mode %s)", r.Mount(), Mode())
	word := fmt.Sprintf("captrace%08d", rand.IntN(1e8)) // no dash: it can head a slice
	const uid = "0b2d9a1e_4c7f_4d0b_9b1e_000000000001"
	const id = "4f6e1c0ffee0123456789abcdef0123456789abcdef0123456789abcdef01234"
	for _, tc := range []struct {
		name, cgroupsPath, cgroup string
	}{
		{"cgroupfs", "/" + word + "/kubepods/besteffort/pod" + uid + "/" + id,
			"/" + word + "/kubepods/besteffort/pod" + uid + "/" + id},
		{"systemd", word + "-besteffort-pod" + uid + ".slice:cri-containerd:" + id,
			"/" + word + ".slice/" + word + "-besteffort.slice/" + word + "-besteffort-pod" + uid + ".slice/cri-containerd-" + id + ".scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := makeCgroup(t, r.Mount(), tc.cgroup)
			kernelID, pid := kernelCgroupID(t, dir)

			byPID, tried, err := r.FromPID(pid)
			if err != nil || byPID != kernelID {
				t.Errorf("FromPID(%d) = %d (%s), %v; kernel says %d", pid, byPID, tried, err, kernelID)
			}
			byPath, tried, err := r.FromCgroupsPath(tc.cgroupsPath)
			if err != nil || byPath != kernelID {
				t.Errorf("FromCgroupsPath(%q) = %d (%s), %v; kernel says %d", tc.cgroupsPath, byPath, tried, err, kernelID)
			}
			if tried != dir {
				t.Errorf("resolved %s, created %s", tried, dir)
			}
			t.Logf("%s: kernel %d, from PID %d, from path %d", dir, kernelID, byPID, byPath)
		})
	}
}

// kernelCgroupID starts a process in dir and returns the cgroup ID that
// bpf_get_current_cgroup_id() returns in that process's system calls, read
// by a small raw tracepoint program on sys_enter, and the process's PID.
func kernelCgroupID(t *testing.T, dir string) (uint64, uint32) {
	t.Helper()
	result, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatalf("BPF map: %v", err)
	}
	defer result.Close()

	// The process waits on stdin until the program is attached, then reads
	// again: system calls the program sees, and it stays alive for FromPID.
	fd, err := syscall.Open(dir, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "read first; read second")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	err = cmd.Start()
	syscall.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})

	// if (current tgid == pid) result[0] = bpf_get_current_cgroup_id();
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.RawTracepoint,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.FnGetCurrentPidTgid.Call(),
			asm.RSh.Imm(asm.R0, 32),
			asm.JNE.Imm(asm.R0, int32(pid), "exit"),
			asm.FnGetCurrentCgroupId.Call(),
			asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
			asm.StoreImm(asm.RFP, -16, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, result.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -16),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -8),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("BPF program: %v", err)
	}
	defer prog.Close()
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: prog})
	if err != nil {
		t.Fatalf("attach raw tracepoint sys_enter: %v", err)
	}
	defer l.Close()

	t.Cleanup(func() { stdin.Close() })
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	var id uint64
	for deadline := time.Now().Add(5 * time.Second); id == 0; time.Sleep(5 * time.Millisecond) {
		if err := result.Lookup(uint32(0), &id); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the BPF program saw no system call of process %d", pid)
		}
	}
	return id, uint32(pid)
}

// makeCgroup creates cgroup (a path from the hierarchy's root) under mount
// and removes it, and every directory it had to create, at cleanup.
func makeCgroup(t *testing.T, mount, cgroup string) string {
	t.Helper()
	dir := filepath.Join(mount, cgroup)
	top := filepath.Join(mount, strings.SplitN(strings.TrimPrefix(cgroup, "/"), "/", 2)[0])
	if _, err := os.Stat(top); err == nil {
		t.Fatalf("%s exists already", top)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for try := 0; try < 50; try++ {
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil {
				t.Errorf("remove test cgroup %s: %v", d, err)
			}
		}
	})
	return dir
}
