package stack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a long-running process of the stack, logged to a file and known by
// PID. Its PID and start time are recorded in <dir>/pids so that a later run
// can stop it after a crash without ever matching processes by name.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid after done is closed
}

// spawnOpts are the less common ways to start a proc.
type spawnOpts struct {
	env      []string
	cgroupFD int      // >0: start the process in this cgroup2 directory (clone3 CLONE_INTO_CGROUP)
	stderr   *os.File // nil: stderr goes to the log file like stdout
}

func (s *Stack) spawn(name string, argv []string, o spawnOpts) (*proc, error) {
	logPath := filepath.Join(s.Dir, "logs", name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== %s: %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if o.stderr != nil {
		cmd.Stderr = o.stderr
	}
	cmd.Env = append(os.Environ(), o.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if o.cgroupFD > 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = o.cgroupFD
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := recordPID(s.Dir, name, cmd.Process.Pid); err != nil {
		return p, err
	}
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and, after grace, SIGKILL; it returns once the process is reaped.
func (p *proc) stop(grace time.Duration) {
	if p == nil || p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	<-p.done
}

// recordPID appends "name pid starttime" to <dir>/pids.
func recordPID(dir, name string, pid int) error {
	start, err := procStartTime(pid)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "pids"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%s %d %d\n", name, pid, start)
	return err
}

// procStartTime is field 22 of /proc/PID/stat: with the PID it names one process for good.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// comm (field 2) may hold spaces; fields after it start past the last ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 {
		return 0, errors.New("short /proc/PID/stat")
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// killRecorded SIGKILLs every process listed in <dir>/pids that still runs
// with the recorded start time, and waits for them to go.
func killRecorded(dir string) []string {
	data, err := os.ReadFile(filepath.Join(dir, "pids"))
	if err != nil {
		return nil
	}
	var killed []string
	for _, line := range strings.Split(string(data), "\n") {
		var name string
		var pid int
		var start uint64
		if n, _ := fmt.Sscanf(line, "%s %d %d", &name, &pid, &start); n != 3 {
			continue
		}
		if killPID(pid, start) {
			killed = append(killed, fmt.Sprintf("%s(%d)", name, pid))
		}
	}
	return killed
}

// killPID SIGKILLs pid if it is still the process that started at start, and
// waits up to 5 s for it to disappear. It reports whether it sent the signal.
func killPID(pid int, start uint64) bool {
	if got, err := procStartTime(pid); err != nil || got != start {
		return false
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if got, err := procStartTime(pid); err != nil || got != start {
			break
		}
		// A zombie keeps its stat entry until its parent reaps it; state Z counts as gone.
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && strings.HasPrefix(strings.TrimSpace(string(st[i+1:])), "Z") {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// Process is a long-running process started with Spawn. It is recorded by
// PID and start time, so that teardown (or a later run's, after a crash)
// stops it without ever matching processes by name.
type Process struct{ p *proc }

// Spawn starts argv as a process of the stack, logged to LogPath(name); in
// the stack's private mount namespace when inNamespace.
func (s *Stack) Spawn(name string, argv []string, inNamespace bool) (*Process, error) {
	if inNamespace {
		argv = s.inNamespace(argv...)
	}
	p, err := s.spawn(name, argv, spawnOpts{})
	if err != nil {
		return nil, err
	}
	return &Process{p}, nil
}

// LogPath is the log file of the process called name.
func (s *Stack) LogPath(name string) string { return filepath.Join(s.Dir, "logs", name+".log") }

// PID is the process's ID.
func (p *Process) PID() int { return p.p.pid() }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool { return p.p.exited() }

// Err is how the process ended (nil while it runs or after a clean exit).
func (p *Process) Err() error {
	if !p.p.exited() {
		return nil
	}
	return p.p.err
}

// Stop sends SIGTERM, then SIGKILL after grace (at once when grace is 0),
// and returns once the process is reaped.
func (p *Process) Stop(grace time.Duration) {
	if p != nil {
		p.p.stop(grace)
	}
}
