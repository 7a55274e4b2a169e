package k8s

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"testing"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The API server's certificate verifies for every name a client uses, and
// each client certificate carries the identity the API server authorizes.
func TestPKI(t *testing.T) {
	p, err := NewPKI(t.TempDir(), "node-abc", []net.IP{net.ParseIP("192.0.2.2")})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, p.CACert()))
	serving := readCert(t, p.ServingCert())
	for _, name := range []string{"127.0.0.1", "10.0.0.1", "192.0.2.2", "kubernetes.default.svc", "localhost"} {
		if _, err := serving.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("serving certificate for %s: %v", name, err)
		}
	}
	for who, want := range map[string][2]string{
		"admin":                    {"captrace-e2e-admin", "system:masters"},
		"node":                     {"system:node:node-abc", "system:nodes"},
		"apiserver-kubelet-client": {"kube-apiserver-kubelet-client", "system:masters"},
	} {
		c := readCert(t, p.ClientCert(who))
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", who, err)
		}
		if c.Subject.CommonName != want[0] || len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != want[1] {
			t.Errorf("%s: subject %v, want CN=%s O=%s", who, c.Subject, want[0], want[1])
		}
	}
	if _, err := p.client("admin"); err != nil {
		t.Error(err)
	}
}
