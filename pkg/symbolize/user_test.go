package symbolize

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/captrace/captrace/internal/privtest"

	"golang.org/x/sys/unix"
)

const goProgram = `package main

import "os"

//go:noinline
func namedCaller() { os.Stdin.Read(make([]byte, 1)) }

func main() { os.Stdout.WriteString("ready\n"); namedCaller() }
`

// builtGo caches buildGo's binaries per ldflags for the package's tests.
var builtGo = map[string]string{}

// buildGo builds goProgram with extra ldflags (e.g. "-s -w" strips it),
// once per ldflags; tests copy it where they need it elsewhere.
func buildGo(t *testing.T, ldflags string) string {
	t.Helper()
	if p, ok := builtGo[ldflags]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "captrace-symbolize-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(goProgram), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module prog\ngo 1.21\n"), 0o644)
	out := filepath.Join(dir, "prog")
	cmd := exec.Command("go", "build", "-ldflags="+ldflags, "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	builtGo[ldflags] = out
	return out
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, p := range builtGo {
		os.RemoveAll(filepath.Dir(p))
	}
	os.Exit(code)
}

// symbolOffset returns the file offset and address of a function symbol,
// read from an unstripped copy.
func symbolOffset(t *testing.T, path, name string) (off, vaddr uint64) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, _ := f.Symbols()
	for _, s := range syms {
		if s.Name == name {
			for _, p := range f.Progs {
				if p.Type == elf.PT_LOAD && s.Value >= p.Vaddr && s.Value < p.Vaddr+p.Filesz {
					return s.Value - p.Vaddr + p.Off, s.Value
				}
			}
		}
	}
	t.Fatalf("%s: no symbol %s", path, name)
	return 0, 0
}

func parseFile(t *testing.T, path string) (*binaryInfo, [20]byte, bool) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, ok := readBuildID(f)
	return parseBinary(f, path), id, ok
}

// Go binaries: ELF symbols, and debug/gosym once stripped; C binaries: ELF
// symbols, and module+offset once stripped (the code is unnamed).
func TestBinaryFrames(t *testing.T) {
	full := buildGo(t, "")
	stripped := buildGo(t, "-s -w")
	off, _ := symbolOffset(t, full, "main.namedCaller")
	for _, path := range []string{full, stripped} {
		b, _, hasID := parseFile(t, path)
		if !hasID {
			t.Errorf("%s: no GNU build ID found (Go puts .note.gnu.build-id outside PT_NOTE)", path)
		}
		if got := b.frame(off + 4); got != "main.namedCaller+0x4 (prog)" {
			t.Errorf("%s: frame %q, want main.namedCaller+0x4 (prog)", path, got)
		}
	}

	cc, err := exec.LookPath("cc")
	if err != nil {
		privtest.Lacks(t, fmt.Sprintf("a C compiler for the C frames (%v; apt-get install gcc)", err))
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "nice.c")
	os.WriteFile(src, []byte("#include <sys/resource.h>\n__attribute__((noinline)) int renice_me(void) { return setpriority(PRIO_PROCESS, 0, -1); }\nint main(void) { return renice_me(); }\n"), 0o644)
	cbin := filepath.Join(dir, "nice")
	if msg, err := exec.Command(cc, "-static", "-O1", "-o", cbin, src).CombinedOutput(); err != nil {
		privtest.Lacks(t, fmt.Sprintf("a static C link for the C frames (apt-get install libc6-dev): %v\n%s", err, msg))
	}
	coff, _ := symbolOffset(t, cbin, "renice_me")
	b, _, hasID := parseFile(t, cbin)
	if got := b.frame(coff + 1); got != "renice_me+0x1 (nice)" || !hasID {
		t.Errorf("static C: frame %q (build ID %v), want renice_me+0x1 (nice)", got, hasID)
	}
	if msg, err := exec.Command("strip", "--strip-all", cbin).CombinedOutput(); err != nil {
		t.Fatalf("strip: %v\n%s", err, msg)
	}
	b, _, _ = parseFile(t, cbin)
	if got, want := b.frame(coff+1), "nice+0x"; !strings.HasPrefix(got, want) || strings.Contains(got, "renice_me") {
		t.Errorf("stripped C: frame %q, want module+offset", got)
	}
}

// A frame resolves after its process exited: by build ID through the
// mappings read while it lived, and by the executable's dev+inode when the
// kernel gave only an address.
func TestUserStackAfterExit(t *testing.T) {
	prog := buildGo(t, "")
	cmd := exec.Command(prog)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	bufio.NewReader(out).ReadString('\n') // "ready": mapped and running
	pid := uint32(cmd.Process.Pid)

	u := NewUser(Limits{})
	u.Learn(pid) // first sight, while it lives
	in.Close()   // it exits
	cmd.Wait()

	off, vaddr := symbolOffset(t, prog, "main.namedCaller")
	_, id, _ := parseFile(t, prog)
	var st unix.Stat_t
	if err := unix.Stat(prog, &st); err != nil {
		t.Fatal(err)
	}
	f, _ := elf.Open(prog)
	var startCode uint64 = ^uint64(0)
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && p.Vaddr < startCode {
			startCode = p.Vaddr
		}
	}
	f.Close()
	exe := Exe{Ino: st.Ino, DevMajor: unix.Major(st.Dev), DevMinor: unix.Minor(st.Dev), StartCode: startCode, EndCode: startCode + 1<<30}
	got := u.Stack(pid, exe, []UserFrame{
		{HasBuildID: true, BuildID: id, Offset: off + 2},
		{IP: vaddr + 3},
		{HasBuildID: true, BuildID: [20]byte{1, 2, 3}, Offset: 0x10},
		{IP: 0x7f0000001000},
	})
	want := []string{
		"main.namedCaller+0x2 (prog)",
		"main.namedCaller+0x3 (prog)",
		"[unknown] 0x10 (buildid 0102030000000000000000000000000000000000)",
		"[unknown] 0x7f0000001000 (process gone)",
	}
	if strings.Join(got, ";") != strings.Join(want, ";") {
		t.Errorf("stack after exit:\n got %q\nwant %q", got, want)
	}
	if n := u.Unresolved(); n != 2 {
		t.Errorf("unresolved counted %d, want 2", n)
	}

}

// A task that is gone, whose files only its container has: the parent's
// /proc root (a chroot here, as a container's rootfs) is searched for the
// build ID and for the executable's device and inode; the host has no file
// at that path.
func TestUserStackThroughParentRoot(t *testing.T) {
	privtest.Root(t)
	prog := buildGo(t, "")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "app"), 0o755)
	data, err := os.ReadFile(prog)
	if err != nil {
		t.Fatal(err)
	}
	inRoot := filepath.Join(root, "app", "prog")
	if err := os.WriteFile(inRoot, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/app/prog")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { in.Close(); cmd.Wait() }()
	bufio.NewReader(out).ReadString('\n')

	off, vaddr := symbolOffset(t, inRoot, "main.namedCaller")
	_, id, _ := parseFile(t, inRoot)
	var st unix.Stat_t
	if err := unix.Stat(inRoot, &st); err != nil {
		t.Fatal(err)
	}
	exe := Exe{Ino: st.Ino, DevMajor: unix.Major(st.Dev), DevMinor: unix.Minor(st.Dev),
		StartCode: 0x400000, EndCode: 0x400000 + 1<<30, Ppid: uint32(cmd.Process.Pid)}
	const gone = 0x7ffffff0 // no such task
	for name, frame := range map[string]UserFrame{
		"by build ID":         {HasBuildID: true, BuildID: id, Offset: off + 2},
		"by device and inode": {IP: vaddr + 2},
	} {
		u := NewUser(Limits{})
		if got := u.Stack(gone, exe, []UserFrame{frame}); len(got) != 1 || got[0] != "main.namedCaller+0x2 (prog)" {
			t.Errorf("%s: %q", name, got)
		}
	}
}
