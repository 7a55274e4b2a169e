// Command captrace-image builds captrace's multi-architecture OCI image from
// the static binaries of `make dist`, without a container engine, and writes
// it as an OCI image layout tarball (`ctr -n k8s.io images import FILE`).
//
//	captrace-image [-ref REF,…] -version V -revision SHA -created EPOCH -dist DIR -o FILE
//
// One commit gives one digest: the layer, config and layout depend only on
// the binaries and the flags (the commit's time, never the clock).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/captrace/captrace/deploy/kubernetes"
	"github.com/captrace/captrace/internal/ociimage"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// MaxCompressedBytes is the budget of one architecture's image (issue 16).
const MaxCompressedBytes = 30 << 20

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("captrace-image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	refs := fs.String("ref", "", "comma-separated references `ctr images import` tags the image with "+
		"(default: "+kubernetes.ImageRepo+":VERSION and the DaemonSet's "+kubernetes.Image+")")
	version := fs.String("version", "dev", "release version (git describe)")
	revision := fs.String("revision", "", "commit the binaries were built from")
	source := fs.String("source", "https://github.com/captrace/captrace", "repository URL (org.opencontainers.image.source)")
	created := fs.Int64("created", 0, "the commit's time in seconds since the epoch (SOURCE_DATE_EPOCH)")
	dist := fs.String("dist", "dist", "make dist's directory: DIST/captrace-VERSION-linux-ARCH/captrace")
	arches := fs.String("arches", "amd64,arm64", "comma-separated GOARCH values")
	license := fs.String("license", "LICENSE", "license file copied into the image")
	out := fs.String("o", "", "output OCI layout tarball (required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "captrace-image: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *out == "" {
		fmt.Fprintln(stderr, "captrace-image: -o FILE is required")
		return 2
	}
	refList := []string{kubernetes.ImageRepo + ":" + *version, kubernetes.Image}
	if *refs != "" {
		refList = strings.Split(*refs, ",")
	}
	for _, r := range refList {
		if !strings.Contains(r[strings.LastIndex(r, "/")+1:], ":") {
			fmt.Fprintf(stderr, "captrace-image: reference %q has no tag (name:tag)\n", r)
			return 2
		}
	}
	spec := ociimage.Spec{Refs: slices.Compact(refList), Version: *version, Revision: *revision, Source: *source,
		Created: time.Unix(*created, 0).UTC(), Binaries: map[string][]byte{}}
	var err error
	if spec.License, err = os.ReadFile(*license); err != nil {
		fmt.Fprintf(stderr, "captrace-image: %v\n", err)
		return 1
	}
	for _, arch := range strings.Split(*arches, ",") {
		path := filepath.Join(*dist, "captrace-"+*version+"-linux-"+arch, "captrace")
		bin, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintf(stderr, "captrace-image: %v (run make dist first)\n", err)
			return 1
		}
		spec.Binaries[arch] = bin
	}
	if err := build(spec, *out, stdout); err != nil {
		fmt.Fprintf(stderr, "captrace-image: %v\n", err)
		return 1
	}
	return 0
}

// build writes the layout tarball (through a temporary file, renamed when
// complete) and prints the digest and each architecture's compressed size.
func build(spec ociimage.Spec, out string, stdout io.Writer) error {
	idx, err := spec.Index()
	if err != nil {
		return err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	for _, m := range im.Manifests {
		img, err := idx.Image(m.Digest)
		if err != nil {
			return err
		}
		size, err := compressedSize(img)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "captrace-image: %s/%s %s, %s compressed\n", m.Platform.OS, m.Platform.Architecture, m.Digest, mib(size))
		if size > MaxCompressedBytes {
			return fmt.Errorf("the %s image is %s, over the %s budget", m.Platform.Architecture, mib(size), mib(MaxCompressedBytes))
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".captrace-image-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	digest, err := spec.WriteLayoutTar(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "captrace-image: index %s written to %s as %s\n", digest, out, strings.Join(spec.Refs, ", "))
	return nil
}

// compressedSize is what a node downloads for one platform: manifest,
// config and layers.
func compressedSize(img v1.Image) (int64, error) {
	total, err := img.Size()
	if err != nil {
		return 0, err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return 0, err
	}
	total += int64(len(cfg))
	layers, err := img.Layers()
	if err != nil {
		return 0, err
	}
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

func mib(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB" }
