package k8s

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI is the node's self-made certificate authority and the files signed by
// it, all under one directory: the API server's serving certificate, client
// certificates for the admin (system:masters), the kubelet
// (system:node:<name>) and the API server's kubelet client, and the
// service-account signing key pair.
type PKI struct {
	Dir string
}

// Paths of the PKI's files (PEM).
func (p PKI) CACert() string               { return filepath.Join(p.Dir, "ca.crt") }
func (p PKI) CAKey() string                { return filepath.Join(p.Dir, "ca.key") }
func (p PKI) ServingCert() string          { return filepath.Join(p.Dir, "apiserver.crt") }
func (p PKI) ServingKey() string           { return filepath.Join(p.Dir, "apiserver.key") }
func (p PKI) ClientCert(who string) string { return filepath.Join(p.Dir, who+".crt") }
func (p PKI) ClientKey(who string) string  { return filepath.Join(p.Dir, who+".key") }
func (p PKI) SAKey() string                { return filepath.Join(p.Dir, "sa.key") }
func (p PKI) SAPub() string                { return filepath.Join(p.Dir, "sa.pub") }

// Clients of the PKI: who → subject (CN, O).
var pkiClients = map[string]pkix.Name{
	"admin":                    {CommonName: "captrace-e2e-admin", Organization: []string{"system:masters"}},
	"apiserver-kubelet-client": {CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
}

// NewPKI writes a fresh CA and every certificate and key of a node called
// nodeName whose API server answers on the given IPs.
func NewPKI(dir, nodeName string, apiserverIPs []net.IP) (PKI, error) {
	p := PKI{Dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	now := time.Now().Add(-time.Hour) // tolerate clock skew between the processes' views
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "captrace-e2e-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return p, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, err
	}
	if err := writeCertAndKey(p.CACert(), p.CAKey(), caDER, caKey); err != nil {
		return p, err
	}
	serial := int64(2)
	issue := func(certPath, keyPath string, subject pkix.Name, usage x509.ExtKeyUsage, ips []net.IP, dns []string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		serial++
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      subject,
			NotBefore:    now,
			NotAfter:     now.Add(48 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
			DNSNames:     dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		if err != nil {
			return err
		}
		return writeCertAndKey(certPath, keyPath, der, key)
	}
	// 10.0.0.1 is the "kubernetes" Service's ClusterIP (first address of --service-cluster-ip-range).
	ips := append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")}, apiserverIPs...)
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if err := issue(p.ServingCert(), p.ServingKey(), pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth, ips, dns); err != nil {
		return p, err
	}
	clients := map[string]pkix.Name{"node": {CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}}}
	for who, name := range pkiClients {
		clients[who] = name
	}
	for who, subject := range clients {
		if err := issue(p.ClientCert(who), p.ClientKey(who), subject, x509.ExtKeyUsageClientAuth, nil, nil); err != nil {
			return p, err
		}
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	if err := writeKey(p.SAKey(), saKey); err != nil {
		return p, err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return p, err
	}
	return p, os.WriteFile(p.SAPub(), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

func writeCertAndKey(certPath, keyPath string, der []byte, key crypto.Signer) error {
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return writeKey(keyPath, key)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key for %s: %w", path, err)
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// Kubeconfig writes a kubeconfig at path for the client who of the PKI,
// talking to server.
func (p PKI) Kubeconfig(path, server, who string) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: captrace-e2e
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: captrace-e2e
  context:
    cluster: captrace-e2e
    user: %s
current-context: captrace-e2e
`, server, p.CACert(), who, p.ClientCert(who), p.ClientKey(who), who)
	return os.WriteFile(path, []byte(cfg), 0o600)
}
