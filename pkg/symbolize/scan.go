package symbolize

import (
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Bounds of one scan of a container's root (its files are a pod author's).
const (
	maxScanFiles = 20000 // entries looked at
	maxScanDepth = 8
)

// scanSkip are directories of a root that hold no binaries worth reading.
var scanSkip = map[string]bool{"proc": true, "sys": true, "dev": true, "run": true, "tmp": true, "var": true}

// rootKey identifies a root directory (a container's rootfs) by dev+inode.
func rootKey(root string) (fileKey, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(root, &st); err != nil {
		return fileKey{}, false
	}
	return fileKey{dev: uint64(st.Dev), ino: st.Ino}, true
}

// scanRootLocked looks, once per root, for the ELF files of a container
// through /proc/<pid>/root of a live process of it: the files a task that
// already exited ran, found by build ID or by device and inode. Only the
// build ID is read here; symbols are read for the files a frame needs.
func (u *User) scanRootLocked(pid uint32) {
	if pid == 0 {
		return
	}
	root := "/proc/" + strconv.FormatUint(uint64(pid), 10) + "/root"
	key, ok := rootKey(root)
	if !ok || u.scanned[key] {
		return
	}
	if len(u.scanned) >= u.lim.Processes {
		clear(u.scanned)
	}
	u.scanned[key] = true
	seen := 0
	// The trailing slash makes the walk enter the magic link to the root.
	root += "/"
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		seen++
		if seen > maxScanFiles {
			return filepath.SkipAll
		}
		rel := strings.TrimPrefix(path, root)
		if d.IsDir() {
			if strings.Count(rel, "/") > maxScanDepth || scanSkip[rel] {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil || info.Size() < 64 || (info.Mode()&0o111 == 0 && !strings.Contains(d.Name(), ".so")) {
			return nil
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		k := fileKey{dev: devKey(unixMajor(st.Dev), unixMinor(st.Dev)), ino: st.Ino}
		if _, known := u.byFile[k]; known {
			return nil
		}
		u.candidate(k, path)
		return nil
	})
}

// candidate records where a file of a container is, by dev+inode and by
// build ID, without reading its symbols.
func (u *User) candidate(k fileKey, path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	ef, err := openELF(f)
	if err != nil {
		return
	}
	c := candidateFile{path: path}
	c.buildID, c.hasBuildID = readBuildID(ef)
	if len(u.candidates) >= 16*u.lim.Binaries {
		clear(u.candidates)
		clear(u.candidateIDs)
	}
	u.candidates[k] = c
	if c.hasBuildID {
		u.candidateIDs[c.buildID] = k
	}
}

type candidateFile struct {
	path       string
	buildID    [20]byte
	hasBuildID bool
}

// fromCandidate reads the symbols of a file found by a root scan.
func (u *User) fromCandidate(k fileKey) *binaryInfo {
	c, ok := u.candidates[k]
	if !ok {
		return nil
	}
	e := u.indexFile(mapping{file: k, path: c.path})
	return e.bin
}

// Linux dev_t encoding (glibc's gnu_dev_major/minor).
func unixMajor(dev uint64) uint32 { return uint32((dev>>32)&0xfffff000 | (dev>>8)&0xfff) }
func unixMinor(dev uint64) uint32 { return uint32((dev>>12)&0xffffff00 | dev&0xff) }
