package output

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/captrace/captrace/internal/privtest"
)

// On a full filesystem (a 16 KiB tmpfs) the file sink's writes fail, leave
// no torn line behind, and succeed again once space returns.
func TestFileSinkFullFilesystem(t *testing.T) {
	privtest.Root(t)
	dir := t.TempDir()
	if err := syscall.Mount("captrace-test", dir, "tmpfs", 0, "size=16k"); err != nil {
		privtest.Lacks(t, "a tmpfs mount: "+err.Error())
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	path := filepath.Join(dir, "events.log")
	sink, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	line := append(bytes.Repeat([]byte("x"), 999), '\n')
	written, failed := 0, 0
	for i := 0; i < 40; i++ {
		if _, err := sink.file.Write(line); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write %d: %v, want ENOSPC", i, err)
			}
			failed++
			continue
		}
		written++
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if failed == 0 || len(data) != written*len(line) {
		t.Fatalf("%d written, %d failed, file holds %d bytes: want only whole lines (%d bytes)", written, failed, len(data), written*len(line))
	}
	if err := os.Truncate(path, 0); err != nil { // space returns
		t.Fatal(err)
	}
	if _, err := sink.file.Write(line); err != nil {
		t.Fatalf("write after space returned: %v", err)
	}
	if data, _ := os.ReadFile(path); !bytes.Equal(data, line) {
		t.Fatalf("after space returned the file holds %d bytes, want one line", len(data))
	}
}
