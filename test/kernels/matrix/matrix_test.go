package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/captrace/captrace/internal/privtest"
)

// A serial log as qemu writes it: \r\n, console resets, kernel messages.
const sampleLog = "\x1bc\x1b[?7lSeaBIOS\r\n" +
	"CAPTRACE-KERNELS-BOOTED kernel=6.1.0-57-cloud-amd64 uptime=1.96\r\n" +
	"CAPTRACE-KERNELS-BEGIN guestcheck\r\n" +
	"=== RUN   TestA\r\n" +
	"--- PASS: TestA (0.01s)\r\n" +
	"=== RUN   TestB\r\n" +
	"    b_test.go:3: skipping\r\n" +
	"--- SKIP: TestB (0.00s)\r\n" +
	"PASS\r\n\r\n" +
	"CAPTRACE-KERNELS-EXIT guestcheck status=0 uptime=2.97\r\n" +
	"CAPTRACE-KERNELS-BEGIN bpf\r\n" +
	"=== RUN   TestOpen\r\n" +
	"=== RUN   TestOpen/fexit\r\n" +
	"    open_test.go:9: boom\r\n" +
	"[    3.1] some kernel message\r\n" +
	"--- FAIL: TestOpen (0.20s)\r\n" +
	"    --- FAIL: TestOpen/fexit (0.10s)\r\n" +
	"=== RUN   TestClose\r\n" +
	"--- PASS: TestClose (0.00s)\r\n" +
	"=== RUN   TestHang\r\n" +
	"    hang_test.go:1: waiting"

func outcomes(r runResult) map[string]string {
	m := map[string]string{}
	for _, b := range r.Binaries {
		for _, t := range b.Tests {
			m[t.Name] = t.Outcome
		}
	}
	return m
}

func TestParseSerialMissingExitMarkerFails(t *testing.T) {
	r := parseSerial(sampleLog, []string{"guestcheck", "bpf"})
	want := map[string]string{
		"guestcheck.TestA": "PASS", "guestcheck.TestB": "SKIP",
		"bpf.TestOpen": "FAIL", "bpf.TestOpen/fexit": "FAIL", "bpf.TestClose": "PASS",
		"bpf.TestHang": "NORESULT",
	}
	if got := outcomes(r); !reflect.DeepEqual(got, want) {
		t.Fatalf("outcomes = %v, want %v", got, want)
	}
	if !r.Booted || r.Kernel != "6.1.0-57-cloud-amd64" || r.Done {
		t.Fatalf("booted=%v kernel=%q done=%v", r.Booted, r.Kernel, r.Done)
	}
	if !r.Failed() {
		t.Fatal("a run without its done marker passed")
	}
	if p := r.Binaries[0].Problem; p != "" {
		t.Errorf("guestcheck problem = %q, want none", p)
	}
	if p := r.Binaries[1].Problem; !strings.Contains(p, "no exit marker") {
		t.Errorf("bpf problem = %q, want no exit marker", p)
	}
	open := r.Binaries[1].Tests[0]
	if !strings.Contains(strings.Join(open.Output, "\n"), "open_test.go:9: boom") {
		t.Errorf("TestOpen's excerpt misses its failure message: %q", open.Output)
	}
	hang := r.Binaries[1].Tests[len(r.Binaries[1].Tests)-1]
	if !strings.Contains(strings.Join(hang.Output, "\n"), "waiting") {
		t.Errorf("TestHang's excerpt misses its last output: %q", hang.Output)
	}
}

func TestParseSerialVerdicts(t *testing.T) {
	pass := "CAPTRACE-KERNELS-BOOTED kernel=k\nCAPTRACE-KERNELS-BEGIN x\n=== RUN   T\n--- PASS: T (0.00s)\nPASS\n" +
		"CAPTRACE-KERNELS-EXIT x status=0\nCAPTRACE-KERNELS-DONE\n"
	for _, tc := range []struct {
		name, log string
		expected  []string
		failed    bool
	}{
		{"all passed", pass, []string{"x"}, false},
		{"non-zero exit", strings.Replace(pass, "status=0", "status=1", 1), []string{"x"}, true},
		{"no tests ran", strings.Replace(pass, "--- PASS: T (0.00s)\n", "", 1), []string{"x"}, true},
		{"marker after unterminated line", strings.Replace(pass, "PASS\nCAPTRACE-KERNELS-EXIT", "PASSCAPTRACE-KERNELS-EXIT", 1), []string{"x"}, false},
		{"no done marker", strings.Replace(pass, "CAPTRACE-KERNELS-DONE\n", "", 1), []string{"x"}, true},
		{"binary never started", pass, []string{"x", "y"}, true},
		{"unexpected binary", pass, nil, true},
		{"empty log", "", []string{"x"}, true},
		{"kernel warning", strings.Replace(pass, "--- PASS", "[    3.123456] ------------[ cut here ]------------\n[    3.123457] WARNING: CPU: 0 PID: 1 at kernel/x.c:1 f+0x1/0x2\n--- PASS", 1), []string{"x"}, true},
		{"harmless kernel notice", strings.Replace(pass, "--- PASS", "[    4.468315] Unstable clock detected, switching default tracing clock to \"global\"\n--- PASS", 1), []string{"x"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseSerial(tc.log, tc.expected).Failed(); got != tc.failed {
				t.Fatalf("Failed() = %v, want %v", got, tc.failed)
			}
		})
	}
}

func TestSeriesPackages(t *testing.T) {
	names := []string{
		"linux-image-6.1.0-9-cloud-amd64", "linux-image-6.1.0-57-cloud-amd64", "linux-image-6.1.0-10-cloud-amd64",
		"linux-image-6.1.0-57-cloud-amd64-dbg", "linux-image-6.1.0-57-cloud-amd64-unsigned",
		"linux-image-6.12.9+deb12-cloud-amd64", "linux-image-6.12.117+deb12-cloud-amd64", "linux-image-6.12.100+deb12-cloud-amd64",
		"linux-image-6.1.0-57-rt-amd64", "linux-image-6.12-cloud-amd64", "linux-image-cloud-amd64",
		"linux-image-7.2.13+deb14-cloud-amd64", "linux-image-7.2.13+deb14-cloud-arm64", "linux-image-6.12.117+deb12-cloud-arm64",
	}
	if got, want := seriesPackages("6.1", "amd64", names), []string{
		"linux-image-6.1.0-9-cloud-amd64", "linux-image-6.1.0-10-cloud-amd64", "linux-image-6.1.0-57-cloud-amd64",
	}; !reflect.DeepEqual(got, want) {
		t.Errorf("6.1: %v, want %v", got, want)
	}
	if got, want := seriesPackages("6.12", "amd64", names), []string{
		"linux-image-6.12.9+deb12-cloud-amd64", "linux-image-6.12.100+deb12-cloud-amd64", "linux-image-6.12.117+deb12-cloud-amd64",
	}; !reflect.DeepEqual(got, want) {
		t.Errorf("6.12: %v, want %v", got, want)
	}
	if got, want := seriesPackages("newest", "amd64", names), "linux-image-7.2.13+deb14-cloud-amd64"; len(got) == 0 || got[len(got)-1] != want {
		t.Errorf("newest amd64: %v, want last %s", got, want)
	}
	if got, want := seriesPackages("6.12", "arm64", names), []string{"linux-image-6.12.117+deb12-cloud-arm64"}; !reflect.DeepEqual(got, want) {
		t.Errorf("6.12 arm64: %v, want %v", got, want)
	}
	for pkg, want := range map[string]string{
		"linux-image-6.12.117+deb12-cloud-amd64": "6.12.117",
		"linux-image-6.1.0-57-cloud-amd64":       "6.1.0-57",
		"linux-image-6.12.117+deb12-cloud-arm64": "6.12.117-arm64",
	} {
		if got := label(pkg); got != want {
			t.Errorf("label(%s) = %q, want %q", pkg, got, want)
		}
	}
}

func TestParseKernelSpec(t *testing.T) {
	for in, want := range map[string]string{
		"6.1":                                    "6.1",
		"newest:probe+tp_btf+kprobe":             "newest:probe+tp_btf+kprobe",
		"arm64/6.12":                             "arm64/6.12",
		"linux-image-6.12.117+deb12-cloud-arm64": "arm64/linux-image-6.12.117+deb12-cloud-arm64",
	} {
		spec, err := parseKernelSpec(in)
		if err != nil || spec.String() != want {
			t.Errorf("parseKernelSpec(%q) = %v, %v; want %s", in, spec, err, want)
		}
	}
	for _, bad := range []string{"s390x/6.1", "6", "arm64/linux-image-6.1.0-57-cloud-amd64", "latest"} {
		if _, err := parseKernelSpec(bad); err == nil {
			t.Errorf("parseKernelSpec(%q) accepted", bad)
		}
	}
}

func TestCpioNewc(t *testing.T) {
	var buf bytes.Buffer
	c := &cpioWriter{w: &buf}
	c.bytes("init", 0o755, []byte("hi\n"))
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	want := "070701" + "00000001" + "000081ED" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000003" + "00000000" + "00000000" + "00000000" + "00000000" + "00000005" + "00000000" +
		"init\x00" + "\x00" + // 110+5 bytes, padded to 116
		"hi\n\x00" + // data padded to 4
		"070701" + strings.Repeat("0", 8*4) + "00000001" + strings.Repeat("0", 8*6) + "0000000B" + "00000000" +
		"TRAILER!!!\x00" + "\x00\x00\x00" // 110+11, padded to 124
	if got := buf.String(); got != want {
		t.Fatalf("archive =\n%q\nwant\n%q", got, want)
	}
}

func TestInitramfsIsGzipCpio(t *testing.T) {
	path := t.TempDir() + "/initrd"
	bin := t.TempDir() + "/x.test"
	if err := os.WriteFile(bin, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeInitramfs(path, busyboxPath, []testBinary{{Name: "x", Path: bin}}); err != nil {
		privtest.Lacks(t, "busybox-static (apt-get install busybox-static): "+err.Error())
	}
	data := readGzip(t, path)
	for _, name := range []string{"init\x00", "dev/console\x00", "bin/busybox\x00", "tests/01-x/x.test\x00", "TRAILER!!!\x00"} {
		if !strings.Contains(data, name) {
			t.Errorf("archive lacks %q", name)
		}
	}
}

func readGzip(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPrintableDropsTerminalControl(t *testing.T) {
	if got := printable("\x1bc\x1b[?7l\x1b[2JSeaBIOS\r"); got != "SeaBIOS" {
		t.Fatalf("printable = %q", got)
	}
}
