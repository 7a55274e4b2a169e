package symbolize

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// UserFrame is one user frame as the kernel captured it: a build ID and a
// file offset when the kernel could read the file's build ID, else the bare
// instruction address.
type UserFrame struct {
	HasBuildID bool
	BuildID    [20]byte
	Offset     uint64
	IP         uint64
}

// Limits bound the user symbolizer's caches.
type Limits struct {
	// Binaries is how many parsed ELF files are kept (per build ID).
	Binaries int
	// Processes is how many processes' mappings are kept.
	Processes int
}

// Default limits.
const (
	DefaultBinaries  = 256
	DefaultProcesses = 4096
)

// User resolves user frames. It learns where each build ID lives from the
// mappings of live processes (the event's own, read at first sight, and any
// others it is told about), opening files through /proc/<pid>/root: the
// container's own files, never the host's file of the same name. Safe for
// concurrent use.
type User struct {
	lim Limits

	mu sync.Mutex
	// binaries by build ID; byFile by dev+inode, with or without one.
	binaries map[[20]byte]*binaryInfo
	byFile   map[fileKey]*fileEntry
	procs    map[uint32]*procMaps
	// Files found by scanning a container's root, by dev+inode and by
	// build ID; scanned are the roots already walked.
	candidates   map[fileKey]candidateFile
	candidateIDs map[[20]byte]fileKey
	scanned      map[fileKey]bool
	// Counters, for stats.
	unresolved uint64
}

type fileKey struct {
	dev, ino uint64
}

type fileEntry struct {
	path       string // where it was seen, through a process's root
	buildID    [20]byte
	hasBuildID bool
	bin        *binaryInfo
}

// procMaps are one process's file mappings, read at first sight, so frames
// without a build ID resolve after the process exited.
type procMaps struct {
	maps []mapping
}

type mapping struct {
	start, end, off uint64
	file            fileKey
	path            string // through /proc/<pid>/root
}

// NewUser returns a user symbolizer with limits lim (zero fields: defaults).
func NewUser(lim Limits) *User {
	if lim.Binaries <= 0 {
		lim.Binaries = DefaultBinaries
	}
	if lim.Processes <= 0 {
		lim.Processes = DefaultProcesses
	}
	return &User{lim: lim, binaries: map[[20]byte]*binaryInfo{},
		byFile: map[fileKey]*fileEntry{}, procs: map[uint32]*procMaps{},
		candidates: map[fileKey]candidateFile{}, candidateIDs: map[[20]byte]fileKey{}, scanned: map[fileKey]bool{}}
}

// Learn reads the mappings of a live process and indexes the build IDs of
// its files: a container's long-lived processes (its shell, its init) map
// the binaries its short-lived ones ran. A process gone already is no error.
func (u *User) Learn(pid uint32) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.learnLocked(pid)
}

func (u *User) learnLocked(pid uint32) *procMaps {
	if pm, ok := u.procs[pid]; ok {
		return pm
	}
	pm := readMaps(pid)
	if pm == nil {
		return nil
	}
	if len(u.procs) >= u.lim.Processes {
		clear(u.procs) // bounded: start over rather than grow
	}
	u.procs[pid] = pm
	for _, m := range pm.maps {
		u.indexFile(m)
	}
	return pm
}

// indexFile reads a mapped file once per dev+inode, while its process
// lives: its build ID and its symbols, so frames resolve after the process
// (and its root) are gone.
func (u *User) indexFile(m mapping) *fileEntry {
	if e, ok := u.byFile[m.file]; ok {
		return e
	}
	e := &fileEntry{path: m.path}
	if f, err := os.Open(m.path); err == nil {
		if ef, err := openELF(f); err == nil {
			e.buildID, e.hasBuildID = readBuildID(ef)
			if e.hasBuildID {
				e.bin = u.binaries[e.buildID]
			}
			if e.bin == nil {
				e.bin = parseBinary(ef, m.path)
				if e.hasBuildID {
					u.keep(e.buildID, e.bin)
				}
			}
		}
		f.Close()
	}
	if len(u.byFile) >= 16*u.lim.Binaries {
		clear(u.byFile)
	}
	u.byFile[m.file] = e
	return e
}

// keep caches a parsed binary by build ID, bounded by Limits.Binaries.
func (u *User) keep(id [20]byte, b *binaryInfo) {
	if len(u.binaries) >= u.lim.Binaries {
		clear(u.binaries)
	}
	u.binaries[id] = b
}

func devKey(major, minor uint32) uint64 { return uint64(major)<<32 | uint64(minor) }

// Exe is a task's main executable as the kernel saw it (bpf.ExeID).
type Exe struct {
	Ino                uint64
	DevMajor, DevMinor uint32
	StartCode, EndCode uint64
	// Ppid is the task's parent, whose root is searched when the task is gone.
	Ppid uint32
}

func (e Exe) key() fileKey { return fileKey{dev: devKey(e.DevMajor, e.DevMinor), ino: e.Ino} }

// binaryOf returns the file with key k, if a live process mapped it.
func (u *User) binaryOf(k fileKey) *binaryInfo {
	if e, ok := u.byFile[k]; ok {
		return e.bin
	}
	return u.fromCandidate(k)
}

func readMaps(pid uint32) *procMaps {
	f, err := os.Open("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/maps")
	if err != nil {
		return nil
	}
	defer f.Close()
	root := "/proc/" + strconv.FormatUint(uint64(pid), 10) + "/root"
	pm := &procMaps{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || !strings.HasPrefix(fields[5], "/") || !strings.Contains(fields[1], "x") {
			continue
		}
		start, end, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		var m mapping
		m.start, _ = strconv.ParseUint(start, 16, 64)
		m.end, _ = strconv.ParseUint(end, 16, 64)
		m.off, _ = strconv.ParseUint(fields[2], 16, 64)
		m.file.ino, _ = strconv.ParseUint(fields[4], 10, 64)
		if maj, min, ok := strings.Cut(fields[3], ":"); ok {
			ma, _ := strconv.ParseUint(maj, 16, 32)
			mi, _ := strconv.ParseUint(min, 16, 32)
			m.file.dev = devKey(uint32(ma), uint32(mi))
		}
		m.path = root + strings.Join(fields[5:], " ")
		pm.maps = append(pm.maps, m)
	}
	if len(pm.maps) == 0 {
		return nil // a zombie or a kernel thread: nothing mapped
	}
	return pm
}

// binaryFor returns the binary with build ID id, if a live process mapped it.
func (u *User) binaryFor(id [20]byte) *binaryInfo {
	if b, ok := u.binaries[id]; ok {
		return b
	}
	if k, ok := u.candidateIDs[id]; ok {
		return u.fromCandidate(k)
	}
	return nil
}

// Stack symbolizes a user stack, innermost first, of process pid. Frames
// with a build ID resolve through any file seen with that ID; bare
// addresses through pid's mappings, read now if pid still lives.
func (u *User) Stack(pid uint32, exe Exe, frames []UserFrame) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var pm *procMaps
	// On a miss, look harder, once each: the task's own mappings (if it
	// still lives), then the container's files through its root or its
	// parent's (the shell that ran it usually outlives it).
	learned, scanned := false, false
	learn := func() {
		if !learned {
			learned = true
			pm = u.learnLocked(pid)
		}
	}
	scan := func() {
		if !scanned {
			scanned = true
			u.scanRootLocked(pid)
			u.scanRootLocked(exe.Ppid)
		}
	}
	out := make([]string, 0, len(frames))
	for _, fr := range frames {
		if fr.HasBuildID {
			b := u.binaryFor(fr.BuildID)
			for _, harder := range []func(){learn, scan} {
				if b != nil {
					break
				}
				harder()
				b = u.binaryFor(fr.BuildID)
			}
			if b != nil {
				out = append(out, b.frame(fr.Offset))
				continue
			}
			u.unresolved++
			out = append(out, fmt.Sprintf("[unknown] 0x%x (buildid %s)", fr.Offset, hex.EncodeToString(fr.BuildID[:])))
			continue
		}
		learn()
		if pm == nil && exe.Ino != 0 && fr.IP >= exe.StartCode && fr.IP < exe.EndCode {
			// The task is gone: its executable, by device and inode, as a
			// live process mapped it or as the container's root holds it.
			b := u.binaryOf(exe.key())
			if b == nil {
				scan()
				b = u.binaryOf(exe.key())
			}
			if b != nil {
				if f, ok := b.frameAtIP(fr.IP, exe.StartCode); ok {
					out = append(out, f)
					continue
				}
			}
		}
		out = append(out, u.frameByIP(pm, fr.IP))
	}
	return out
}

func (u *User) frameByIP(pm *procMaps, ip uint64) string {
	if pm != nil {
		for _, m := range pm.maps {
			if ip < m.start || ip >= m.end {
				continue
			}
			off := ip - m.start + m.off
			e := u.indexFile(m)
			if e.bin != nil {
				return e.bin.frame(off)
			}
			u.unresolved++
			return fmt.Sprintf("[unknown] 0x%x (%s)", ip, clean(lastElem(m.path)))
		}
	}
	u.unresolved++
	return fmt.Sprintf("[unknown] 0x%x (process gone)", ip)
}

func lastElem(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// Unresolved counts frames printed as [unknown].
func (u *User) Unresolved() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.unresolved
}
