package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Where `make install` puts the NRI drop-in, and the line a root config needs
// to read it (README "containerd versions").
const (
	nriDropInPath   = "/etc/containerd/conf.d/captrace-nri.toml"
	importsConfD    = `imports = ["/etc/containerd/conf.d/*.toml"]`
	defaultCtrdConf = "/etc/containerd/config.toml"
	nriPluginKey    = "io.containerd.nri.v1.nri"
)

// runningContainerd is a containerd process as doctor finds it: its version
// and the configuration it merged (`containerd config dump` with the same
// --config, so containerd's own loader reads root config and imports).
type runningContainerd struct {
	pid     int
	config  string
	version string // e.g. "v2.2.9"; "" when `--version` failed
	dump    string
	err     error // why version or dump could not be read
}

// findContainerds returns every process whose comm is "containerd".
func findContainerds() []runningContainerd {
	ents, _ := os.ReadDir("/proc")
	var found []runningContainerd
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "containerd" {
			continue
		}
		found = append(found, inspectContainerd(pid))
	}
	return found
}

// inspectContainerd runs the process's own binary (/proc/PID/exe) for its
// version and merged config.
func inspectContainerd(pid int) runningContainerd {
	c := runningContainerd{pid: pid, config: defaultCtrdConf}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		c.err = err
		return c
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	for i, a := range args {
		if (a == "--config" || a == "-c") && i+1 < len(args) {
			c.config = args[i+1]
		} else if v, ok := strings.CutPrefix(a, "--config="); ok {
			c.config = v
		}
	}
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, exe, "--version").Output()
	if err != nil {
		c.err = fmt.Errorf("%s --version: %w", exe, err)
		return c
	}
	// "containerd github.com/containerd/containerd/v2 v2.2.9 <commit>"
	if f := strings.Fields(string(out)); len(f) >= 3 {
		c.version = f[2]
	}
	dump, err := exec.CommandContext(ctx, exe, "--config", c.config, "config", "dump").Output()
	if err != nil {
		c.err = fmt.Errorf("containerd --config %s config dump: %w", c.config, err)
		return c
	}
	c.dump = string(dump)
	return c
}

// checkContainerd says, for each running containerd, whether its merged
// config gives captrace an NRI socket, and what to change for its version.
// A containerd serving another socket than captrace's is a note, unless it is
// the only one.
func checkContainerd(found []runningContainerd, socket string) []finding {
	if len(found) == 0 {
		return []finding{{what: "containerd", detail: "no running containerd found",
			fix: "captrace needs containerd >= 1.7 with NRI enabled: install deploy/containerd-nri.toml (README \"containerd versions\")"}}
	}
	var findings []finding
	for _, c := range found {
		f := finding{what: fmt.Sprintf("containerd %s (pid %d, %s)", c.version, c.pid, c.config), needed: len(found) == 1}
		if c.err != nil {
			f.detail = c.err.Error()
			f.fix = "run captrace doctor as root in containerd's mount namespace"
			findings = append(findings, f)
			continue
		}
		var merged struct {
			Imports []string                  `toml:"imports"`
			Plugins map[string]map[string]any `toml:"plugins"`
		}
		if _, err := toml.Decode(c.dump, &merged); err != nil {
			f.detail = "cannot read `containerd config dump`: " + err.Error()
			findings = append(findings, f)
			continue
		}
		nri := merged.Plugins[nriPluginKey]
		served, _ := nri["socket_path"].(string)
		if served == "" {
			served = "/var/run/nri/nri.sock"
		}
		f.needed = f.needed || served == socket
		imported := false
		for _, pattern := range merged.Imports {
			if ok, _ := filepath.Match(pattern, nriDropInPath); ok || pattern == nriDropInPath {
				imported = true
			}
		}
		disabled := nri == nil && isContainerd1(c.version) || nri["disable"] == true
		switch {
		case disabled:
			f.detail = "NRI is disabled in the merged configuration"
		case nri["disable_connections"] == true:
			f.detail = "NRI refuses external plugins (disable_connections = true)"
		case served != socket:
			f.detail = fmt.Sprintf("NRI serves %s, captrace dials %s", served, socket)
			f.fix = fmt.Sprintf("set nri.socket = %q in captrace's config (or --nri-socket)", served)
		default:
			f.ok = true
			f.detail = "NRI enabled on " + served
			if imported {
				f.detail += " (" + nriDropInPath + " imported)"
			}
		}
		if !f.ok && f.fix == "" {
			f.fix = containerdFix(c.version, c.config, imported)
		}
		findings = append(findings, f)
	}
	return findings
}

// isContainerd1 reports a 1.x version as `containerd --version` prints it:
// "v1.7.35" from a release, "1.7.35+unknown" from a source build.
func isContainerd1(version string) bool {
	return strings.HasPrefix(strings.TrimPrefix(version, "v"), "1.")
}

// containerdFix is what a containerd of this version needs for NRI.
func containerdFix(version, config string, imported bool) string {
	fix := "install deploy/containerd-nri.toml as " + nriDropInPath + " (make install does)"
	if !imported {
		fix += fmt.Sprintf(", add %s to %s", importsConfD, config)
		switch {
		case isContainerd1(version):
			fix += " (containerd 1.7 never reads conf.d by itself, and its NRI is off by default)"
		default:
			fix += " (only a config.toml written by `containerd config default` of 2.2 or later has this line)"
		}
	}
	return fix + ", then restart containerd"
}
