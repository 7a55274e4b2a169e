package k8s

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// Registry serves images over the OCI distribution API (pull only) on
// loopback, so that a pod whose image policy is Always — `kubectl run
// --image=busybox`, as the seed's guide writes it — is pulled by the node's
// containerd for real, with no registry on the network. containerd reaches it
// through a hosts.toml that names it as the server of the mirrored registry.
type Registry struct {
	Addr   string // host:port
	images map[string]stack.Image
	srv    *http.Server
}

// StartRegistry serves images, keyed by repository and tag ("library/busybox:latest").
func StartRegistry(images map[string]stack.Image) (*Registry, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Registry{Addr: ln.Addr().String(), images: images}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(ln)
	return r, nil
}

// Close stops serving.
func (r *Registry) Close() { r.srv.Close() }

// WriteHosts writes <dir>/<registry>/hosts.toml naming r as the only host of
// each of registries (e.g. "docker.io"), for containerd's registry config_path.
func (r *Registry) WriteHosts(dir string, registries ...string) error {
	for _, reg := range registries {
		d := filepath.Join(dir, reg)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		hosts := fmt.Sprintf("# Written by captrace's Kubernetes e2e: %s is served from loopback.\nserver = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", reg, r.Addr, r.Addr)
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ServeHTTP answers the distribution API's GET/HEAD /v2/, manifests (by tag
// or digest) and blobs.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "pull only", http.StatusMethodNotAllowed)
		return
	}
	path := strings.TrimPrefix(req.URL.Path, "/v2/")
	if path == "" || path == req.URL.Path {
		w.WriteHeader(http.StatusOK)
		return
	}
	var repo, kind, ref string
	for _, k := range []string{"/manifests/", "/blobs/"} {
		if i := strings.LastIndex(path, k); i > 0 {
			repo, kind, ref = path[:i], strings.Trim(k, "/"), path[i+len(k):]
			break
		}
	}
	for tagged, img := range r.images {
		name, tag, _ := strings.Cut(tagged, ":")
		if name != repo {
			continue
		}
		switch kind {
		case "manifests":
			if ref != tag && ref != img.Digest() {
				continue
			}
			r.send(w, req, img.MediaType, img.Digest(), img.Manifest)
			return
		case "blobs":
			if data, ok := img.Blobs[ref]; ok {
				r.send(w, req, "application/octet-stream", ref, data)
				return
			}
		}
	}
	http.Error(w, fmt.Sprintf(`{"errors":[{"code":"NAME_UNKNOWN","message":"%s not served here"}]}`, repo), http.StatusNotFound)
}

func (r *Registry) send(w http.ResponseWriter, req *http.Request, mediaType, digest string, data []byte) {
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Docker-Content-Digest", digest)
	http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(data))
}
