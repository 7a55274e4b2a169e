package stack

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"
)

// Image references the stack imports; nothing is ever pulled from a registry.
const (
	BusyboxImage = "localhost/captrace-e2e/busybox:1"
	PauseImage   = "localhost/captrace-e2e/pause:1"
)

// busyboxPath is Debian's busybox-static binary (package busybox-static).
const busyboxPath = "/bin/busybox"

// ociBlob is one content-addressed blob of an OCI image layout.
type ociBlob struct {
	mediaType string
	data      []byte
}

func (b ociBlob) digest() string {
	sum := sha256.Sum256(b.data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func (b ociBlob) descriptor() map[string]any {
	return map[string]any{"mediaType": b.mediaType, "digest": b.digest(), "size": len(b.data)}
}

// BusyboxLayer returns an uncompressed, reproducible rootfs layer holding the
// static busybox, one symlink per applet, and the few files a shell expects.
// There is deliberately no /mnt: the seed's guide creates it.
func BusyboxLayer() ([]byte, error) { return BusyboxLayerWith(nil) }

// BusyboxLayerWith is BusyboxLayer plus extra executables in /bin (name → content).
func BusyboxLayerWith(extra map[string][]byte) ([]byte, error) {
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("read %s (install Debian's busybox-static): %w", busyboxPath, err)
	}
	out, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busyboxPath, err)
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	// Entries in name order, as `tar --sort=name` would write them.
	for _, d := range []string{"bin", "dev", "etc", "proc", "root", "sys"} {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
		switch d {
		case "bin":
			if err := file("bin/busybox", 0o755, bin); err != nil {
				return nil, err
			}
			for _, name := range sortedNames(extra) {
				if err := file("bin/"+name, 0o755, extra[name]); err != nil {
					return nil, err
				}
			}
			for _, a := range applets {
				if a == "busybox" || strings.ContainsAny(a, "/[") || extra[a] != nil {
					continue
				}
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
					return nil, err
				}
			}
		case "etc":
			if err := file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")); err != nil {
				return nil, err
			}
			if err := file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")); err != nil {
				return nil, err
			}
		}
	}
	if err := dir("tmp", 0o1777); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func sortedNames(m map[string][]byte) []string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Image is a one-layer OCI image: its manifest and the blobs it names.
type Image struct {
	Manifest  []byte
	MediaType string            // the manifest's
	Blobs     map[string][]byte // config and layer, by digest ("sha256:…")
}

// Digest is the manifest's digest.
func (i Image) Digest() string { return ociBlob{i.MediaType, i.Manifest}.digest() }

// NewImage builds a one-layer amd64 image with an entrypoint and a default
// command (Docker Hub's busybox has only a command: ["sh"]).
func NewImage(layer []byte, entrypoint, cmd []string) (Image, error) {
	layerBlob, cfgBlob, manifestBlob, err := imageBlobs(layer, entrypoint, cmd)
	if err != nil {
		return Image{}, err
	}
	return Image{
		Manifest:  manifestBlob.data,
		MediaType: manifestBlob.mediaType,
		Blobs:     map[string][]byte{layerBlob.digest(): layerBlob.data, cfgBlob.digest(): cfgBlob.data},
	}, nil
}

func imageBlobs(layer []byte, entrypoint, cmd []string) (layerBlob, cfgBlob, manifestBlob ociBlob, err error) {
	layerBlob = ociBlob{"application/vnd.oci.image.layer.v1.tar", layer}
	cfg, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Env":        []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
			"Entrypoint": entrypoint,
			"Cmd":        cmd,
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerBlob.digest()}},
	})
	if err != nil {
		return
	}
	cfgBlob = ociBlob{"application/vnd.oci.image.config.v1+json", cfg}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        cfgBlob.descriptor(),
		"layers":        []any{layerBlob.descriptor()},
	})
	if err != nil {
		return
	}
	manifestBlob = ociBlob{"application/vnd.oci.image.manifest.v1+json", manifest}
	return layerBlob, cfgBlob, manifestBlob, nil
}

// OCIArchive returns an OCI image layout tar (as `ctr images import` reads it)
// holding one image named ref, made of layer and running entrypoint.
func OCIArchive(ref string, layer []byte, entrypoint []string) ([]byte, error) {
	layerBlob, cfgBlob, manifestBlob, err := imageBlobs(layer, entrypoint, nil)
	if err != nil {
		return nil, err
	}
	md := manifestBlob.descriptor()
	md["platform"] = map[string]string{"architecture": "amd64", "os": "linux"}
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          ref,
		"org.opencontainers.image.ref.name": ref[strings.LastIndex(ref, ":")+1:],
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{md},
	})
	if err != nil {
		return nil, err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "blobs/", Mode: 0o755, ModTime: epoch}); err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "blobs/sha256/", Mode: 0o755, ModTime: epoch}); err != nil {
		return nil, err
	}
	for _, b := range []ociBlob{layerBlob, cfgBlob, manifestBlob} {
		if err := add("blobs/sha256/"+strings.TrimPrefix(b.digest(), "sha256:"), b.data); err != nil {
			return nil, err
		}
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	if err := add("index.json", index); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
