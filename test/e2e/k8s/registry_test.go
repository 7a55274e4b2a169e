package k8s

import (
	"io"
	"net/http"
	"testing"

	"github.com/captrace/captrace/test/e2e/stack"
)

// The registry answers the requests containerd's resolver and fetcher make:
// the API check, a manifest by tag (HEAD, for its digest) and by digest, and
// blobs; anything else is 404.
func TestRegistry(t *testing.T) {
	img, err := stack.NewImage([]byte("layer"), nil, []string{"sh"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := StartRegistry(map[string]stack.Image{"library/busybox:latest": img})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	get := func(method, path string) (*http.Response, string) {
		req, _ := http.NewRequest(method, "http://"+r.Addr+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	if resp, _ := get("GET", "/v2/"); resp.StatusCode != 200 {
		t.Errorf("GET /v2/: %s", resp.Status)
	}
	resp, _ := get("HEAD", "/v2/library/busybox/manifests/latest")
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != img.Digest() || resp.Header.Get("Content-Type") != img.MediaType {
		t.Errorf("HEAD manifest by tag: %s %v", resp.Status, resp.Header)
	}
	if resp, body := get("GET", "/v2/library/busybox/manifests/"+img.Digest()); resp.StatusCode != 200 || body != string(img.Manifest) {
		t.Errorf("GET manifest by digest: %s", resp.Status)
	}
	for digest, data := range img.Blobs {
		if resp, body := get("GET", "/v2/library/busybox/blobs/"+digest); resp.StatusCode != 200 || body != string(data) {
			t.Errorf("GET blob %s: %s", digest, resp.Status)
		}
	}
	for _, path := range []string{"/v2/library/busybox/manifests/other", "/v2/library/alpine/manifests/latest", "/v2/library/busybox/blobs/sha256:00"} {
		if resp, _ := get("GET", path); resp.StatusCode != 404 {
			t.Errorf("GET %s: %s, want 404", path, resp.Status)
		}
	}
	if resp, _ := get("PUT", "/v2/library/busybox/manifests/latest"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("PUT: %s, want 405", resp.Status)
	}
}
