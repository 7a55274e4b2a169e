package stack

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseLogfmt(t *testing.T) {
	kv, err := ParseLogfmt(`time="2026-11-29T10:00:00.123456789Z" level=info msg="cap check" namespace=default pod=set-priority-0 comm="a b\"c" empty= bare capable=false audit=1`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"time": "2026-11-29T10:00:00.123456789Z", "level": "info", "msg": "cap check", "namespace": "default", "pod": "set-priority-0", "comm": `a b"c`, "empty": "", "bare": "", "capable": "false", "audit": "1"}
	for k, v := range want {
		if kv[k] != v {
			t.Errorf("%s = %q, want %q", k, kv[k], v)
		}
	}
	if _, err := ParseLogfmt(`msg="unterminated`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestParseEventFile(t *testing.T) {
	data := []byte(`time=2026-11-29T10:00:01Z level=info msg=stats traced=1
time=2026-11-29T10:00:02.5Z namespace=default pod=p pod_uid=u container=c container_id=abc comm=renice pid=42 tid=42 uid=0 gid=0 capable=false audit=1 insetid=false cap=CAP_SYS_NICE syscall=SYS_SETPRIORITY
`)
	ev, err := ParseEventFile(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 1 {
		t.Fatalf("got %d events, want 1: %v", len(ev), ev)
	}
	e := ev[0]
	if e.Pod != "p" || e.Cap != "CAP_SYS_NICE" || e.Syscall != "SYS_SETPRIORITY" || e.Capable || !e.Audit || e.Pid != 42 || e.Comm != "renice" {
		t.Errorf("wrong event %v", e)
	}
	if !e.Time.Equal(time.Date(2026, 11, 29, 10, 0, 2, 5e8, time.UTC)) {
		t.Errorf("time %v", e.Time)
	}
	if _, err := ParseEventFile([]byte("cap=CAP_CHOWN capable=maybe audit=1\n")); err == nil {
		t.Error("bad capable value accepted")
	}
}

func TestParseJournalJSON(t *testing.T) {
	data := []byte(`{"MESSAGE":"started","_SYSTEMD_UNIT":"captrace.service"}
{"CAP":"CAP_CHOWN","CAPABLE":"true","AUDIT":"1","SYSCALL":"SYS_CHOWN","K8S_NAMESPACE":"default","K8S_POD_NAME":"p","K8S_CONTAINER_NAME":"c","PROC_COMM":"chown","PROC_PID":"7","__REALTIME_TIMESTAMP":"1795945569856168","BIN":[1,2]}
`)
	ev, err := ParseJournalJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 1 || ev[0].Cap != "CAP_CHOWN" || !ev[0].Capable || ev[0].Comm != "chown" || ev[0].Pid != 7 || ev[0].Time.UnixMicro() != 1795945569856168 {
		t.Fatalf("got %v", ev)
	}
	b := Both{Logfmt: []Event{ev[0], ev[0]}, Journal: ev}
	if d := DiffSinks(b); len(d) != 1 || !strings.Contains(d[0], "only in logfmt") {
		t.Errorf("DiffSinks = %v", d)
	}
}

// TestOCIArchive checks that the image archive is a well-formed OCI layout:
// every descriptor's digest and size match its blob, and the config names the
// layer's diff ID.
func TestOCIArchive(t *testing.T) {
	layer := []byte("not really a tar, but content-addressed all the same")
	archive, err := OCIArchive(BusyboxImage, layer, []string{"/bin/sh"})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		files[h.Name] = data
	}
	type desc struct {
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations"`
	}
	blob := func(d desc) []byte {
		t.Helper()
		data, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing", d.Digest)
		}
		sum := sha256.Sum256(data)
		if "sha256:"+hex.EncodeToString(sum[:]) != d.Digest || len(data) != d.Size {
			t.Fatalf("blob %s: digest or size mismatch", d.Digest)
		}
		return data
	}
	var index struct{ Manifests []desc }
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != BusyboxImage {
		t.Errorf("image name %q", got)
	}
	var manifest struct {
		Config desc
		Layers []desc
	}
	if err := json.Unmarshal(blob(index.Manifests[0]), &manifest); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Rootfs struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Layers) != 1 || !bytes.Equal(blob(manifest.Layers[0]), layer) || cfg.Rootfs.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Errorf("layer or diff ID wrong: %+v %+v", manifest, cfg)
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %q", files["oci-layout"])
	}
}
