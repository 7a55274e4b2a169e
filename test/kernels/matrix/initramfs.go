package main

import (
	"bufio"
	"compress/gzip"
	_ "embed"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

//go:embed init.sh
var initScript []byte

// busyboxPath is Debian's busybox-static on the host (scripts/install-deps.sh
// kernels); other architectures' comes from fetchBusybox.
const busyboxPath = "/bin/busybox"

// cpioWriter writes the "newc" cpio format the kernel unpacks as initramfs
// (Documentation/driver-api/early-userspace/buffer-format.rst). Entries carry
// uid 0 and mtime 0, so the archive depends only on its contents.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeLink = 0o120000
	modeChar = 0o020000
)

func (c *cpioWriter) pad(n int64) {
	if c.err == nil && n%4 != 0 {
		_, c.err = c.w.Write(make([]byte, 4-n%4))
	}
}

// header writes one entry's header and name; size bytes of data must follow.
func (c *cpioWriter) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	if name == "TRAILER!!!" {
		c.ino = 0
	}
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	if _, c.err = io.WriteString(c.w, h+name+"\x00"); c.err != nil {
		return
	}
	c.pad(int64(len(h) + len(name) + 1))
}

func (c *cpioWriter) dir(name string) { c.header(name, modeDir|0o755, 0, 0, 0) }

func (c *cpioWriter) charDev(name string, major, minor uint32) {
	c.header(name, modeChar|0o600, 0, major, minor)
}

func (c *cpioWriter) symlink(name, target string) {
	c.header(name, modeLink|0o777, int64(len(target)), 0, 0)
	if c.err == nil {
		_, c.err = io.WriteString(c.w, target)
	}
	c.pad(int64(len(target)))
}

func (c *cpioWriter) bytes(name string, perm uint32, data []byte) {
	c.header(name, modeFile|perm, int64(len(data)), 0, 0)
	if c.err == nil {
		_, c.err = c.w.Write(data)
	}
	c.pad(int64(len(data)))
}

func (c *cpioWriter) file(name string, perm uint32, path string) {
	if c.err != nil {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		c.err = err
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		c.err = err
		return
	}
	c.header(name, modeFile|perm, st.Size(), 0, 0)
	if c.err != nil {
		return
	}
	n, err := io.Copy(c.w, f)
	if err == nil && n != st.Size() {
		err = fmt.Errorf("%s changed size while archived", path)
	}
	c.err = err
	c.pad(n)
}

func (c *cpioWriter) close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	return c.err
}

// testBinary is one `go test -c` binary for the guest, with its package's
// testdata directory (go test runs a binary in its package directory).
type testBinary struct {
	Name     string // e.g. "bpf": the second binary is /tests/02-bpf/bpf.test in the guest
	Path     string
	Testdata string // "" if the package has none
}

// writeInitramfs writes a gzip'd newc archive: busybox, /init, /dev/console
// (the kernel opens it for init before devtmpfs is mounted) and the tests.
func writeInitramfs(path, busybox string, bins []testBinary) error {
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	defer os.Remove(path + ".tmp")
	bw := bufio.NewWriterSize(f, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return err
	}
	c := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc", "tests"} {
		c.dir(d)
	}
	c.charDev("dev/console", 5, 1)
	c.file("bin/busybox", 0o755, busybox)
	c.symlink("bin/sh", "busybox")
	c.bytes("init", 0o755, initScript)
	c.bytes("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
	c.bytes("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	for i, b := range bins {
		// /init runs /tests/*/*.test in glob order: number them to keep ours.
		dir := fmt.Sprintf("tests/%02d-%s", i+1, b.Name)
		c.dir(dir)
		c.file(dir+"/"+b.Name+".test", 0o755, b.Path)
		if b.Testdata != "" {
			if err := addTree(c, b.Testdata, dir+"/testdata"); err != nil {
				return err
			}
		}
	}
	if err := c.close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// addTree archives the directory src as dst, following nothing outside it.
func addTree(c *cpioWriter, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		name := dst
		if rel != "." {
			name = dst + "/" + filepath.ToSlash(rel)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			c.dir(name)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			c.symlink(name, target)
		case d.Type().IsRegular():
			c.file(name, uint32(info.Mode().Perm()), p)
		default:
			return fmt.Errorf("%s: cannot archive %s", p, strings.ToLower(d.Type().String()))
		}
		return c.err
	})
}
