package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// FilterMapName is captrace's cgroup filter map (the BRIEF's shared contract).
const FilterMapName = "cgroup_filter"

// CaptraceMapEntries dumps the BPF map called name that the running captrace
// daemon holds open, with bpftool. Other processes' maps of the same name
// (another captrace, a parallel test) are ignored.
func (s *Stack) CaptraceMapEntries(ctx context.Context, name string) ([]json.RawMessage, error) {
	pid := s.CaptracePID()
	if pid == 0 {
		return nil, fmt.Errorf("captrace is not running")
	}
	ids, err := bpfMapIDsOf(pid)
	if err != nil {
		return nil, err
	}
	var named []int
	for _, id := range ids {
		out, err := run(ctx, s.Tools.Bpftool, "-j", "map", "show", "id", fmt.Sprint(id))
		if err != nil {
			continue // closed meanwhile
		}
		var m struct {
			Name string `json:"name"`
		}
		if json.Unmarshal([]byte(out), &m) == nil && m.Name == name {
			named = append(named, id)
		}
	}
	if len(named) != 1 {
		return nil, fmt.Errorf("captrace (pid %d) holds %d BPF maps named %q among its map fds %v, want 1", pid, len(named), name, ids)
	}
	ids = named
	out, err := run(ctx, s.Tools.Bpftool, "-j", "map", "dump", "id", fmt.Sprint(ids[0]))
	if err != nil {
		return nil, err
	}
	var entries []json.RawMessage
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		return nil, fmt.Errorf("bpftool -j map dump id %d: %w", ids[0], err)
	}
	return entries, nil
}

// bpfMapIDsOf lists the IDs of the BPF maps process pid holds file
// descriptors of.
func bpfMapIDsOf(pid int) ([]int, error) {
	o, err := BPFObjectsOf(pid)
	return o.Maps, err
}

// BPFObjects are the IDs of the BPF programs, maps and links a process holds.
type BPFObjects struct {
	Progs, Maps, Links []int
}

// BPFObjectsOf reads the BPF objects process pid holds file descriptors of,
// from /proc/PID/fdinfo (Debian's bpftool lists no holders).
func BPFObjectsOf(pid int) (BPFObjects, error) {
	var o BPFObjects
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return o, err
	}
	seen := map[string]bool{}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue
		}
		var key string
		var dst *[]int
		switch link {
		case "anon_inode:bpf-prog":
			key, dst = "prog_id:", &o.Progs
		case "anon_inode:bpf-map":
			key, dst = "map_id:", &o.Maps
		case "anon_inode:bpf_link":
			key, dst = "link_id:", &o.Links
		default:
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, key); ok {
				v = strings.TrimSpace(v)
				if id, err := strconv.Atoi(v); err == nil && !seen[key+v] {
					seen[key+v] = true
					*dst = append(*dst, id)
				}
			}
		}
	}
	return o, nil
}
