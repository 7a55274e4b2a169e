package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// boot runs one kernel under qemu's software emulation with the initramfs and
// writes the serial console to logPath. env becomes the guest's environment:
// the kernel passes unknown KEY=value command-line words to /init. qemu's
// exit status says nothing about the tests (it exits 0 on any guest poweroff);
// only the log does.
func boot(ctx context.Context, vmlinuz, initramfs, logPath string, env []string, timeout time.Duration) (time.Duration, error) {
	for _, kv := range env {
		if strings.ContainsAny(kv, " \t\"") {
			return 0, fmt.Errorf("guest environment %q: spaces and quotes cannot pass the kernel command line", kv)
		}
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return 0, err
	}
	defer logFile.Close()

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// loglevel=5 shows KERN_WARNING and worse, so WARN() splats reach the log.
	cmdline := append([]string{"console=ttyS0", "panic=-1", "loglevel=5"}, env...)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
		"-nographic", "-no-reboot", "-nic", "none", "-monitor", "none",
		"-kernel", vmlinuz, "-initrd", initramfs,
		"-append", strings.Join(cmdline, " "))
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// stdin stays /dev/null: -nographic would otherwise put a terminal in raw mode.
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start)
	if ctx.Err() == context.DeadlineExceeded {
		fmt.Fprintf(logFile, "\n[matrix] qemu killed after %s timeout\n", timeout)
		return took, fmt.Errorf("killed after the %s timeout", timeout)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return took, fmt.Errorf("qemu: %v", err)
	}
	return took, err
}
