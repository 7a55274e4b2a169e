package plugin

import (
	"errors"
	"fmt"
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
	"github.com/captrace/captrace/pkg/cgmap"
)

// cgroupTree makes real cgroups under the host's cgroup2 mount for one test
// and removes them afterwards. Its names start with a random "captrace"
// word, so they never collide with the host's.
type cgroupTree struct {
	t     testing.TB
	mount string
	word  string   // captraceNNNN: no dashes, so it can head a systemd slice too
	roots []string // top-level directories created, removed at cleanup
}

func newCgroupTree(t testing.TB) *cgroupTree {
	t.Helper()
	privtest.Root(t)
	r, err := cgmap.NewResolver()
	if err != nil {
		privtest.Lacks(t, "a cgroup2 mount: "+err.Error())
	}
	c := &cgroupTree{t: t, mount: r.Mount(), word: fmt.Sprintf("captrace%08d", rand.IntN(1e8))}
	t.Cleanup(c.removeAll)
	return c
}

// mkdir creates the cgroup cg (a path from the hierarchy's root) and returns
// its directory.
func (c *cgroupTree) mkdir(cg string) string {
	c.t.Helper()
	root := "/" + strings.SplitN(strings.TrimPrefix(cg, "/"), "/", 2)[0]
	if !strings.HasPrefix(root, "/"+c.word) {
		c.t.Fatalf("cgroup %s is outside the test's names", cg)
	}
	if !contains(c.roots, root) {
		c.roots = append(c.roots, root)
	}
	dir := filepath.Join(c.mount, cg)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	return dir
}

// spawn starts a sleeping process inside dir (clone3 with CgroupFD, so it
// is there from its first instruction) and kills it at cleanup.
func (c *cgroupTree) spawn(dir string) *exec.Cmd {
	c.t.Helper()
	fd, err := syscall.Open(dir, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	defer syscall.Close(fd)
	cmd := exec.Command("/bin/sleep", "3600")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// moveTo moves process pid into dir.
func (c *cgroupTree) moveTo(pid int, dir string) {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cgroupTree) removeAll() {
	for _, root := range c.roots {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(c.mount, root), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		// Deepest first.
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for try := 0; try < 50; try++ {
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(10 * time.Millisecond) // the last process is still exiting
			}
			if err != nil {
				c.t.Errorf("remove test cgroup %s: %v", d, err)
			}
		}
	}
}

// inode is the cgroup ID of dir as stat(2) reports it, independently of cgmap.
func inode(t testing.TB, dir string) uint64 {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
