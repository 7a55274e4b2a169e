// Package ociimage builds captrace's OCI image (the static binary on an empty
// base) and writes it as an OCI image layout tarball, reproducibly: one Spec
// gives one digest. cmd/captrace-image (make image) and the e2e use it.
package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Where the image puts captrace. The unit runs the same path on a node.
const (
	BinaryPath  = "/usr/local/bin/captrace"
	LicensePath = "/usr/share/doc/captrace/LICENSE"
	// FileOwner owns every file of the image (distroless' "nonroot"): nothing
	// in it belongs to root, and the binary is read-only even to its owner.
	// The process itself runs as uid 0, because Kubernetes grants added
	// capabilities to a non-root process only in its bounding set (there are
	// no ambient capabilities in a pod spec), and captrace needs them effective.
	FileOwner = 65532
)

// Licenses is the SPDX expression of what the image holds: captrace (Go) and
// the BPF program it embeds.
const Licenses = "Apache-2.0 AND (GPL-2.0-only OR BSD-2-Clause)"

// Spec is everything an image build depends on; one Spec gives one digest.
type Spec struct {
	Refs     []string          // full references, e.g. ghcr.io/captrace/captrace:v0.1.0
	Version  string            // git describe
	Revision string            // commit
	Source   string            // repository URL
	Created  time.Time         // the commit's time (SOURCE_DATE_EPOCH), never the build's
	Binaries map[string][]byte // GOARCH → static captrace binary
	License  []byte
}

// platformOf is the OCI platform of a Go architecture.
func platformOf(arch string) v1.Platform {
	p := v1.Platform{OS: "linux", Architecture: arch}
	if arch == "arm64" {
		p.Variant = "v8"
	}
	return p
}

// labels are the OCI annotations/labels every manifest and config carries.
func (s Spec) labels() map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "captrace",
		"org.opencontainers.image.description": "Linux capability checks of Kubernetes containers (containerd NRI + eBPF)",
		"org.opencontainers.image.source":      s.Source,
		"org.opencontainers.image.version":     s.Version,
		"org.opencontainers.image.revision":    s.Revision,
		"org.opencontainers.image.licenses":    Licenses,
		"org.opencontainers.image.created":     s.Created.UTC().Format(time.RFC3339),
	}
}

// rootfs returns the image's only layer: captrace and its LICENSE, as an
// uncompressed tar whose bytes depend on nothing but the inputs (name order,
// fixed times and owners).
func rootfs(binary, license []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(typ byte, name string, mode int64, size int) *tar.Header {
		return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: int64(size), ModTime: mtime,
			Uid: FileOwner, Gid: FileOwner, Format: tar.FormatPAX}
	}
	entries := []struct {
		name string
		mode int64
		data []byte // nil: a directory
	}{
		{"etc/", 0o755, nil},
		{"etc/captrace/", 0o755, nil}, // the ConfigMap's mount point
		{"usr/", 0o755, nil},
		{"usr/local/", 0o755, nil},
		{"usr/local/bin/", 0o755, nil},
		{strings.TrimPrefix(BinaryPath, "/"), 0o555, binary},
		{"usr/share/", 0o755, nil},
		{"usr/share/doc/", 0o755, nil},
		{"usr/share/doc/captrace/", 0o755, nil},
		{strings.TrimPrefix(LicensePath, "/"), 0o444, license},
	}
	for _, e := range entries {
		if e.data == nil {
			if err := tw.WriteHeader(hdr(tar.TypeDir, e.name, e.mode, 0)); err != nil {
				return nil, err
			}
			continue
		}
		if err := tw.WriteHeader(hdr(tar.TypeReg, e.name, e.mode, len(e.data))); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// archImage builds the single-platform image of one architecture.
func (s Spec) archImage(arch string) (v1.Image, error) {
	layerTar, err := rootfs(s.Binaries[arch], s.License, s.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: s.Created},
			CreatedBy: "captrace-image: " + BinaryPath + " (static, CGO_ENABLED=0 -trimpath)",
		},
	})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	p := platformOf(arch)
	cfg.OS, cfg.Architecture, cfg.Variant = p.OS, p.Architecture, p.Variant
	cfg.Created = v1.Time{Time: s.Created}
	cfg.Config = v1.Config{
		Entrypoint: []string{BinaryPath},
		User:       "0:0",
		WorkingDir: "/",
		Labels:     s.labels(),
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, s.labels()).(v1.Image), nil
}

// Index builds the multi-architecture image index, architectures in name order.
func (s Spec) Index() (v1.ImageIndex, error) {
	arches := make([]string, 0, len(s.Binaries))
	for arch := range s.Binaries {
		arches = append(arches, arch)
	}
	sort.Strings(arches)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range arches {
		img, err := s.archImage(arch)
		if err != nil {
			return nil, fmt.Errorf("%s image: %w", arch, err)
		}
		p := platformOf(arch)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &p},
		})
	}
	return mutate.Annotations(idx, s.labels()).(v1.ImageIndex), nil
}

// WriteLayoutTar writes the index as an OCI image layout tarball, named so
// that `ctr images import` tags it with each of s.Refs, and returns the
// index's digest.
// The tar holds the layout's files in name order with fixed times, so one
// Spec always gives the same bytes.
func (s Spec) WriteLayoutTar(w io.Writer) (v1.Hash, error) {
	idx, err := s.Index()
	if err != nil {
		return v1.Hash{}, err
	}
	digest, err := idx.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	dir, err := os.MkdirTemp("", "captrace-image-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	for _, ref := range s.Refs {
		if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{
			"io.containerd.image.name":          ref,
			"org.opencontainers.image.ref.name": ref[strings.LastIndex(ref, ":")+1:],
		})); err != nil {
			return v1.Hash{}, err
		}
	}
	return digest, tarDir(w, dir, s.Created)
}

// tarDir writes the regular files and directories under dir to w in name
// order, every entry owned by 0:0 with mtime.
func tarDir(w io.Writer, dir string, mtime time.Time) error {
	var names []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			rel += "/"
		} else if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", path)
		}
		names = append(names, rel)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	tw := tar.NewWriter(w)
	for _, name := range names {
		if strings.HasSuffix(name, "/") {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: mtime}); err != nil {
				return err
			}
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	return tw.Close()
}
