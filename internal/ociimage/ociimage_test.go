package ociimage

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func testSpec() Spec {
	return Spec{
		Refs: []string{"ghcr.io/captrace/captrace:v1.2.3", "ghcr.io/captrace/captrace:dev"}, Version: "v1.2.3", Revision: "0123456789abcdef0123456789abcdef01234567",
		Source: "https://github.com/captrace/captrace", Created: time.Unix(1796060644, 0).UTC(),
		Binaries: map[string][]byte{"amd64": []byte("\x7fELF amd64 captrace"), "arm64": []byte("\x7fELF arm64 captrace")},
		License:  []byte("Apache License 2.0\n"),
	}
}

// Two builds of one Spec give the same bytes, so the same digest; a
// different binary gives another digest.
func TestReproducible(t *testing.T) {
	var a, b bytes.Buffer
	da, err := testSpec().WriteLayoutTar(&a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := testSpec().WriteLayoutTar(&b)
	if err != nil {
		t.Fatal(err)
	}
	if da != db || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatalf("two builds differ: %s (%d bytes) vs %s (%d bytes)", da, a.Len(), db, b.Len())
	}
	other := testSpec()
	other.Binaries["arm64"] = []byte("\x7fELF arm64 captrace, another commit")
	var c bytes.Buffer
	dc, err := other.WriteLayoutTar(&c)
	if err != nil {
		t.Fatal(err)
	}
	if dc == da {
		t.Errorf("a different binary gave the same digest %s", dc)
	}
}

// The layout read back with go-containerregistry's reader: an OCI index of
// both platforms, named for ctr, each image a static binary on an empty base
// with the OCI labels, files owned by non-root, the process root.
func TestLayout(t *testing.T) {
	spec := testSpec()
	var buf bytes.Buffer
	digest, err := spec.WriteLayoutTar(&buf)
	if err != nil {
		t.Fatal(err)
	}
	dir := untar(t, buf.Bytes())
	outer, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	om, err := outer.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(om.Manifests) != 2 {
		t.Fatalf("index.json: %+v, want one entry per reference", om.Manifests)
	}
	for i, tag := range []string{"v1.2.3", "dev"} {
		m := om.Manifests[i]
		if m.Digest != digest || m.Annotations["io.containerd.image.name"] != spec.Refs[i] ||
			m.Annotations["org.opencontainers.image.ref.name"] != tag {
			t.Errorf("index.json entry %d: %+v, want %s named %s", i, m, digest, spec.Refs[i])
		}
	}
	idx, err := outer.ImageIndex(digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != types.OCIImageIndex || len(im.Manifests) != 2 {
		t.Fatalf("index %s with %d manifests, want an OCI index of 2", im.MediaType, len(im.Manifests))
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.source":   spec.Source,
		"org.opencontainers.image.version":  spec.Version,
		"org.opencontainers.image.revision": spec.Revision,
		"org.opencontainers.image.licenses": Licenses,
		"org.opencontainers.image.created":  "2026-11-30T17:44:04Z",
	}
	for i, arch := range []string{"amd64", "arm64"} {
		m := im.Manifests[i]
		if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != arch {
			t.Errorf("manifest %d: platform %+v, want linux/%s", i, m.Platform, arch)
			continue
		}
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		manifest, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range wantLabels {
			if cfg.Config.Labels[k] != v || manifest.Annotations[k] != v {
				t.Errorf("%s: %s = label %q, annotation %q; want %q", arch, k, cfg.Config.Labels[k], manifest.Annotations[k], v)
			}
		}
		if cfg.Architecture != arch || cfg.OS != "linux" || strings.Join(cfg.Config.Entrypoint, " ") != BinaryPath ||
			cfg.Config.User != "0:0" || !cfg.Created.Time.Equal(spec.Created) {
			t.Errorf("%s config: %+v", arch, cfg)
		}
		if manifest.MediaType != types.OCIManifestSchema1 || manifest.Config.MediaType != types.OCIConfigJSON {
			t.Errorf("%s: media types %s / %s, want OCI", arch, manifest.MediaType, manifest.Config.MediaType)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: %d layers (%v), want 1 on an empty base", arch, len(layers), err)
		}
		files := layerFiles(t, layers[0])
		if got := files[strings.TrimPrefix(BinaryPath, "/")]; got == nil || string(got.data) != string(spec.Binaries[arch]) ||
			got.Mode != 0o555 || got.Uid != FileOwner || got.Gid != FileOwner {
			t.Errorf("%s: binary entry %+v", arch, got)
		}
		if got := files[strings.TrimPrefix(LicensePath, "/")]; got == nil || string(got.data) != string(spec.License) {
			t.Errorf("%s: no LICENSE in the image", arch)
		}
		for name, f := range files {
			if f.Uid == 0 || !f.ModTime.Equal(spec.Created) {
				t.Errorf("%s: %s owned by %d, mtime %v; want %d and the commit's time", arch, name, f.Uid, f.ModTime, FileOwner)
			}
		}
	}
}

type layerFile struct {
	*tar.Header
	data []byte
}

func layerFiles(t *testing.T, l v1.Layer) map[string]*layerFile {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*layerFile{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(h.Name, "/")] = &layerFile{h, data}
	}
}

func untar(t *testing.T, data []byte) string {
	t.Helper()
	dir := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(path, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
