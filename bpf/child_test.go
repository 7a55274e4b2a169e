package bpf

// The test binary doubles as the traced workload: with CAPTRACE_TEST_CHILD=1
// it runs childMain instead of the tests. The child locks its main thread
// (so pid == tid, and per-thread capsets apply to the checks) and executes
// one command per stdin line, answering one line per command.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const childEnv = "CAPTRACE_TEST_CHILD"

func init() {
	if os.Getenv(childEnv) != "" {
		runtime.LockOSThread()
	}
}

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
	case stackProbeChild:
		os.Exit(stackProbeMain())
	default:
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

func childMain() int {
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	reply := func(format string, args ...any) {
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
	}
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		arg := 0
		if len(f) > 1 {
			arg, _ = strconv.Atoi(f[1])
		}
		switch f[0] {
		case "id":
			comm, _ := os.ReadFile("/proc/self/comm")
			reply("%d %d %d %d %s", unix.Getpid(), unix.Gettid(), unix.Getuid(), unix.Getgid(), strings.TrimSpace(string(comm)))
		case "drop", "raise":
			reply("%v", setEffective(capSysNice, f[0] == "raise"))
		case "nice": // arg checks of CAP_SYS_NICE in setpriority
			reply("%v", niceLoop(arg))
		case "renice0":
			_, _, e := unix.RawSyscall(unix.SYS_SETPRIORITY, unix.PRIO_PROCESS, 0, 0)
			reply("%v", e)
		case "nicefor": // one check per millisecond for arg ms
			end := time.Now().Add(time.Duration(arg) * time.Millisecond)
			for time.Now().Before(end) {
				niceLoop(1)
				time.Sleep(time.Millisecond)
			}
			reply("done")
		case "niceflood": // niceflood MS RATE BURST: checks of CAP_SYS_NICE in a tight loop for MS ms;
			// replies how many, and how many a limiter of RATE/s and BURST passes at the
			// times this loop made them (the kernel's limiter, simulated here: see expectPasses).
			rate, burst := 0, 0
			if len(f) > 3 {
				rate, _ = strconv.Atoi(f[2])
				burst, _ = strconv.Atoi(f[3])
			}
			lim := newLimiterModel(Settings{RateLimit: uint32(rate), RateBurst: uint32(burst)})
			n := 0
			for end := time.Now().Add(time.Duration(arg) * time.Millisecond); ; {
				niceLoop(1)
				n++
				// One clock reading per check: a preemption between the check
				// and the reading misplaces that one check only.
				now := time.Now()
				lim.check(now)
				if !now.Before(end) {
					break
				}
			}
			reply("%d %d", n, lim.passed)
		case "sched": // CAP_SYS_NICE in sched_setscheduler
			param := struct{ prio int32 }{1}
			_, _, e := unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, 0, 1 /* SCHED_FIFO */, uintptr(unsafe.Pointer(&param)))
			reply("%v", e)
		case "setsuid": // CAP_SETUID in setid (ns_capable_setid): saved uid to arg and back
			_, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), ^uintptr(0), uintptr(arg))
			if e == 0 {
				_, _, e = unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), ^uintptr(0), 0)
			}
			reply("%v", e)
		case "setsgid": // CAP_SETGID in setid: saved gid to arg and back
			_, _, e := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), ^uintptr(0), uintptr(arg))
			if e == 0 {
				_, _, e = unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), ^uintptr(0), 0)
			}
			reply("%v", e)
		case "rawsocket": // CAP_NET_RAW: an ICMP raw socket
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
			if err == nil {
				unix.Close(fd)
			}
			reply("%v", err)
		case "mmap": // memory accounting: an accountable private writable mapping
			b, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err == nil {
				err = unix.Munmap(b)
			}
			reply("%v", err)
		case "quietheap": // no heap growth (mmap, memory accounting) from here on: the checks become the workload's alone
			b := make([]byte, 64<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			b = nil
			runtime.GC()
			debug.SetGCPercent(-1)
			reply("<nil>")
		case "exec": // execve (memory accounting) of f[1], waited for
			reply("%v", exec.Command(f[1]).Run())
		case "ptrace": // f[1] run as nobody; attach (audited CAP_SYS_PTRACE), /proc/PID/stat (not audited)
			reply("%v", ptraceOther(f[1]))
		case "seccomp": // non-audited CAP_SYS_ADMIN: a filter without no_new_privs
			reply("%v", allowAllSeccomp())
		case "adminpair": // arg × (non-audited CAP_SYS_ADMIN in seccomp, audited CAP_SYS_ADMIN in unshare)
			reply("%v", adminPairs(arg))
		case "privatemounts": // a mount namespace of its own, before the mount step
			err := unix.Unshare(unix.CLONE_NEWNS)
			if err == nil {
				err = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")
			}
			reply("%v", err)
		case "chown", "chmod", "chroot", "mount", "unshare", "setns":
			reply("%v", igGuideStep(f[0], f[1:]))
		case "rename": // prctl(PR_SET_NAME) of this thread, as a workload posing as runc would
			reply("%v", unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(unsafe.StringData(f[1]+"\x00"))), 0, 0, 0))
		case "forknice": // a forked child (no exec) checks CAP_SYS_NICE once and exits; replies its pid
			pid, err := forkNice()
			reply("%d %v", pid, err)
		case "uringopen": // open f[1] through an io_uring worker, without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
			setEffective(capDacOverride, false)
			setEffective(capDacReadSearch, false)
			res, err := uringOpenAsync(f[1])
			setEffective(capDacOverride, true)
			setEffective(capDacReadSearch, true)
			reply("%d %v", res, err)
		case "exit":
			return 0
		default:
			reply("unknown command %q", f[0])
		}
	}
	return 0
}

// niceLoop asks n times to lower this thread's nice value to -5; without
// CAP_SYS_NICE every call makes one capability check.
func niceLoop(n int) error {
	var err error
	for i := 0; i < n; i++ {
		_, _, e := unix.RawSyscall(unix.SYS_SETPRIORITY, unix.PRIO_PROCESS, 0, uintptr(^uint64(4))) // -5
		if e != 0 {
			err = e
		} else {
			err = nil
		}
	}
	return err
}

// forkNice forks this thread without exec; the child, still in the parent's
// credentials (CAP_SYS_NICE as the thread has it), asks for nice -5 once and
// exits. Only raw system calls run in the child, as in syscall's own fork.
func forkNice() (int, error) {
	pid, errno := rawFork(true)
	if errno != 0 {
		return 0, errno
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(int(pid), &ws, 0, nil); err != nil {
		return int(pid), err
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return int(pid), fmt.Errorf("forked child: %v", ws)
	}
	return int(pid), nil
}

// rawFork forks without exec; the child asks for nice -5 if nice is set,
// then exits 0.
//
//go:nosplit
func rawFork(nice bool) (uintptr, syscall.Errno) {
	pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	if pid == 0 {
		if nice {
			syscall.RawSyscall(syscall.SYS_SETPRIORITY, unix.PRIO_PROCESS, 0, ^uintptr(4)) // -5
		}
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
	return pid, 0
}

// setEffective adds or removes cap from this thread's effective set,
// keeping it permitted so it can come back.
func setEffective(c Capability, on bool) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	bit := uint32(1) << (uint(c) % 32)
	if on {
		data[c/32].Effective |= bit
	} else {
		data[c/32].Effective &^= bit
	}
	return unix.Capset(&hdr, &data[0])
}

func allowAllSeccomp() error {
	filter := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW}}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	_, _, e := unix.RawSyscall6(unix.SYS_PRCTL, unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// adminPairs makes n times a non-audited CAP_SYS_ADMIN check (a seccomp
// filter without no_new_privs: ns_capable_noaudit, seen by every tier), then
// an audited one (unshare(CLONE_NEWUTS): ns_capable). Each round adds one
// allow-all filter (1,000 stay far below the kernel's 32 k instruction limit).
func adminPairs(n int) error {
	for i := 0; i < n; i++ {
		if err := allowAllSeccomp(); err != nil {
			return fmt.Errorf("seccomp: %w", err)
		}
		if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
	}
	return nil
}

// ptraceOther starts path as uid/gid 65534 (CAP_SETGID and CAP_SETUID in its
// setgroups/setgid/setuid), attaches to it from this (locked) thread, which
// checks CAP_SYS_PTRACE audited since the uids differ, reads its
// /proc/PID/stat (CAP_SYS_PTRACE without audit), then kills it by its PID.
func ptraceOther(path string) error {
	cmd := exec.Command(path, "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid
	// Attach once it sleeps: busybox first drops its ids again (setgid and
	// setuid as nobody: denied checks) and grows its heap; attaching midway
	// would make the checks depend on timing. /proc/PID/status asks no
	// capability (unlike stat).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return err
		}
		if strings.Contains(string(status), "\nState:\tS") {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s never went to sleep", path)
		}
	}
	if err := unix.PtraceAttach(pid); err != nil {
		return fmt.Errorf("ptrace attach: %w", err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
		return err
	}
	if err := unix.PtraceDetach(pid); err != nil {
		return fmt.Errorf("ptrace detach: %w", err)
	}
	_, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err
}

var savedIPCNamespace = -1

// igGuideStep makes the system call the seed's ig guide makes with a
// busybox command of the same name (x86_64 syscalls as the seed prints them).
func igGuideStep(step string, args []string) error {
	path := ""
	if len(args) > 0 {
		path = args[0]
	}
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return err
	}
	var e unix.Errno
	switch step {
	case "chown":
		e = chownPath(p)
	case "chmod":
		e = chmodPath(p)
	case "chroot":
		_, _, e = unix.RawSyscall(unix.SYS_CHROOT, uintptr(unsafe.Pointer(p)), 0, 0)
	case "mount":
		return unix.Mount("tmpfs", path, "tmpfs", 0, "")
	case "unshare":
		fd, err := unix.Open("/proc/thread-self/ns/ipc", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		savedIPCNamespace = fd
		return unix.Unshare(unix.CLONE_NEWIPC)
	case "setns":
		return unix.Setns(savedIPCNamespace, unix.CLONE_NEWIPC)
	}
	if e != 0 {
		return e
	}
	return nil
}
