package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"
)

// bootState is what a running boot has shown so far, for progress lines.
type bootState struct {
	mu      sync.Mutex
	booted  bool
	current string // the last test that started, or the last marker
	lines   int
}

func (s *bootState) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.booted {
		return fmt.Sprintf("booting (%d console lines)", s.lines)
	}
	return s.current
}

// observe reads the console as qemu writes it.
func (s *bootState) observe(r io.Reader, log io.Writer, booted chan<- struct{}) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		log.Write([]byte(line + "\n"))
		s.mu.Lock()
		s.lines++
		switch {
		case strings.Contains(line, markBooted) && !s.booted:
			s.booted, s.current = true, "booted"
			close(booted)
		case strings.Contains(line, markBegin):
			s.current = strings.TrimSpace(line[strings.Index(line, markBegin)+len(markBegin):])
		case strings.HasPrefix(line, "=== RUN "):
			bin, _, _ := strings.Cut(s.current, " ")
			s.current = bin + " " + strings.TrimSpace(strings.TrimPrefix(line, "=== RUN "))
		}
		s.mu.Unlock()
	}
	io.Copy(log, r) // whatever follows an over-long line
}

// boot runs one kernel under qemu's software emulation with the initramfs and
// writes the serial console to logPath. env becomes the guest's environment:
// the kernel passes unknown KEY=value command-line words to /init. qemu's
// exit status says nothing about the tests (it exits 0 on any guest poweroff);
// only the log does. A guest that has not printed /init's boot marker within
// bootTimeout is killed, and one still running after timeout.
func boot(ctx context.Context, arch, vmlinuz, initramfs, logPath string, env []string, bootTimeout, timeout time.Duration, state *bootState) (time.Duration, error) {
	for _, kv := range env {
		if strings.ContainsAny(kv, " \t\"") {
			return 0, fmt.Errorf("guest environment %q: spaces and quotes cannot pass the kernel command line", kv)
		}
	}
	a, ok := archs[arch]
	if !ok {
		return 0, fmt.Errorf("no qemu for architecture %q", arch)
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return 0, err
	}
	defer logFile.Close()

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// loglevel=5 shows KERN_WARNING and worse, so WARN() splats reach the log.
	cmdline := append(append([]string{"console=" + a.Console, "panic=-1", "loglevel=5"}, a.Cmdline...), env...)
	args := append(append([]string{}, a.Machine...),
		"-m", "1024", "-smp", "2",
		"-nographic", "-no-reboot", "-nic", "none", "-monitor", "none",
		"-kernel", vmlinuz, "-initrd", initramfs,
		"-append", strings.Join(cmdline, " "))
	cmd := exec.CommandContext(ctx, a.Qemu, args...)
	fmt.Fprintf(logFile, "[matrix] %s %s\n", a.Qemu, strings.Join(args, " "))
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	// stdin stays /dev/null: -nographic would otherwise put a terminal in raw mode.
	cmd.WaitDelay = 5 * time.Second
	booted := make(chan struct{})
	observed := make(chan struct{})
	go func() { state.observe(pr, logFile, booted); close(observed) }()

	start := time.Now()
	if err := cmd.Start(); err != nil {
		pw.Close()
		<-observed
		return 0, fmt.Errorf("starting %s: %w", a.Qemu, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); pw.Close() }()
	bootTimer := time.NewTimer(bootTimeout)
	defer bootTimer.Stop()
	var bootErr error
	select {
	case err = <-exited:
	case <-booted:
		err = <-exited
	case <-bootTimer.C:
		bootErr = fmt.Errorf("guest did not reach /init within %s", bootTimeout)
		cancel()
		err = <-exited
	}
	<-observed
	took := time.Since(start)
	switch {
	case bootErr != nil:
		fmt.Fprintf(logFile, "\n[matrix] qemu killed: %v\n", bootErr)
		return took, bootErr
	case ctx.Err() == context.DeadlineExceeded:
		fmt.Fprintf(logFile, "\n[matrix] qemu killed after %s timeout\n", timeout)
		return took, fmt.Errorf("killed after the %s timeout", timeout)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return took, fmt.Errorf("qemu: %v", err)
	}
	return took, err
}

func hostArch() string { return runtime.GOARCH }
