// Package k8s runs a real single-node Kubernetes (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet v1.37 built from the Go
// module proxy) on the e2e's private containerd, for captrace's Kubernetes
// end-to-end test (`make e2e-k8s`). The recipe and its reasons are in
// test/e2e/k8s/README.md.
//
// Everything lives in one stack directory of test/e2e/stack, which owns
// containerd, the private mount namespace, process records and teardown; this
// package adds the control plane, the kubelet, the CNI bridge, a loopback
// image registry and the certificates.
package k8s

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// kubeletFixedDirs are written by the kubelet whatever its --root-dir: the
// stack's private mount namespace covers them with its own directories.
var kubeletFixedDirs = []string{"/var/lib/kubelet", "/var/log/containers"}

// Options configure Start.
type Options struct {
	// Root is captrace's repository (stack.ProjectRoot() when empty).
	Root string
	// Images are served by the loopback registry as docker.io/<key>, e.g.
	// "library/busybox:latest".
	Images map[string]stack.Image
	// NRIDisabled starts the node's containerd with NRI off (SetNRI changes it).
	NRIDisabled bool
	// Logf receives progress lines.
	Logf func(format string, args ...any)
}

// Node is one running single-node cluster.
type Node struct {
	Stack *stack.Stack
	Root  string
	Bins  Binaries
	// Name is the node's name; IP its InternalIP (the host's address on its default route).
	Name string
	IP   string
	// Dir holds the cluster's files (certificates, kubeconfigs, etcd, kubelet).
	Dir string
	// Kubeconfig is the admin's (system:masters).
	Kubeconfig string
	// Bridge is the CNI bridge's interface name; PodCIDR its pods' subnet.
	Bridge  string
	PodCIDR string

	pki        PKI
	registry   *Registry
	containerd *stack.NodeContainerd
	apiURL     string
	api        *http.Client
	procs      []daemon // in start order
	opts       Options
}

func (n *Node) logf(format string, args ...any) {
	if n.opts.Logf != nil {
		n.opts.Logf(format, args...)
	}
}

// Start builds (or finds cached) binaries, starts the stack's containerd as
// a node runtime and the cluster on it, and waits until the node is Ready.
// On error everything already started is torn down again.
func Start(ctx context.Context, opts Options) (*Node, error) {
	if opts.Root == "" {
		root, err := stack.ProjectRoot()
		if err != nil {
			return nil, err
		}
		opts.Root = root
	}
	n := &Node{Root: opts.Root, opts: opts}
	t0 := time.Now()
	bins, err := EnsureBinaries(ctx, opts.Root, opts.Logf)
	if err != nil {
		return nil, fmt.Errorf("build Kubernetes: %w", err)
	}
	n.Bins = bins
	n.logf("Kubernetes binaries ready in %v", time.Since(t0).Round(time.Millisecond))

	ip, err := defaultRouteIPv4()
	if err != nil {
		return nil, err
	}
	n.IP = ip
	if n.registry, err = StartRegistry(opts.Images); err != nil {
		return nil, fmt.Errorf("start the loopback registry: %w", err)
	}

	n.containerd = &stack.NodeContainerd{Dirs: kubeletFixedDirs, NRIOff: opts.NRIDisabled}
	n.containerd.Etc = n.containerdEtc
	s, err := stack.New(ctx, stack.Options{
		Root:       opts.Root,
		NoCaptrace: true, // captrace runs as the DaemonSet's pod
		Logf:       opts.Logf,
		Node:       n.containerd,
	})
	if err != nil {
		n.registry.Close()
		return nil, err
	}
	n.Stack = s
	if err := n.start(ctx); err != nil {
		err = s.Fail("start the Kubernetes node", fmt.Errorf("%w\n%s", err, n.LogTails(30)))
		n.Stop()
		return nil, err
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	s := n.Stack
	id := s.ID
	n.Name = "node-" + id
	n.Dir = filepath.Join(s.Dir, "k8s")
	n.Bridge = "cni" + id
	n.PodCIDR = fmt.Sprintf("10.244.%d.0/24", rand.IntN(250)+1)
	for _, d := range []string{n.Dir, filepath.Join(n.Dir, "etcd"), filepath.Join(n.Dir, "kubelet"), filepath.Join(n.Dir, "pod-logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := n.registry.WriteHosts(filepath.Join(s.Dir, "registry-hosts"), "docker.io"); err != nil {
		return err
	}
	if err := n.writeCNIConfig(); err != nil {
		return err
	}

	pki, err := NewPKI(filepath.Join(n.Dir, "pki"), n.Name, []net.IP{net.ParseIP(n.IP)})
	if err != nil {
		return fmt.Errorf("make certificates: %w", err)
	}
	n.pki = pki
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort, kubeletPort := ports[0], ports[1], ports[2], ports[3]
	n.apiURL = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	n.Kubeconfig = filepath.Join(n.Dir, "admin.kubeconfig")
	if err := pki.Kubeconfig(n.Kubeconfig, n.apiURL, "admin"); err != nil {
		return err
	}
	kubeletKubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := pki.Kubeconfig(kubeletKubeconfig, n.apiURL, "node"); err != nil {
		return err
	}
	if n.api, err = pki.client("admin"); err != nil {
		return err
	}

	t0 := time.Now()
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	if err := n.spawn("etcd", false, n.Bins.Etcd,
		"--name=default", "--data-dir="+filepath.Join(n.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}
	if err := n.spawn("kube-apiserver", false, n.Bins.APIServer,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort), "--advertise-address="+n.IP,
		"--cert-dir="+filepath.Join(n.Dir, "apiserver-certs"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=AlwaysAllow", "--allow-privileged=true",
		// InternalIP first: `kubectl logs` would otherwise resolve the node's name in DNS.
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--client-ca-file="+pki.CACert(),
		"--tls-cert-file="+pki.ServingCert(), "--tls-private-key-file="+pki.ServingKey(),
		"--kubelet-client-certificate="+pki.ClientCert("apiserver-kubelet-client"),
		"--kubelet-client-key="+pki.ClientKey("apiserver-kubelet-client"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki.SAPub(), "--service-account-signing-key-file="+pki.SAKey(),
		"--enable-priority-and-fairness=false", "--profiling=false"); err != nil {
		return err
	}
	if err := n.waitAPI(ctx, "/readyz", 120*time.Second); err != nil {
		return err
	}
	n.logf("kube-apiserver ready %v after etcd started", time.Since(t0).Round(time.Millisecond))
	if err := n.spawn("kube-controller-manager", false, n.Bins.ControllerManager,
		"--kubeconfig="+n.Kubeconfig, "--leader-elect=false", "--secure-port=0",
		// No cloud: nothing allocates pod CIDRs; host-local's range is fixed.
		"--controllers=*,-nodeipam",
		"--service-account-private-key-file="+pki.SAKey(), "--root-ca-file="+pki.CACert(),
		"--cluster-signing-cert-file="+pki.CACert(), "--cluster-signing-key-file="+pki.CAKey(),
		"--use-service-account-credentials=false", "--profiling=false"); err != nil {
		return err
	}
	if err := n.spawn("kube-scheduler", false, n.Bins.Scheduler,
		"--kubeconfig="+n.Kubeconfig, "--leader-elect=false", "--secure-port=0", "--profiling=false"); err != nil {
		return err
	}

	// The kubelet's cgroupRoot: below the stack's parent, so that teardown
	// (and a later run's stale cleanup) removes every kubepods cgroup.
	if err := s.MakeCgroupParent(); err != nil {
		return err
	}
	kubeletConfig := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(kubeletConfig, []byte(n.kubeletConfiguration(kubeletPort)), 0o644); err != nil {
		return err
	}
	// The kubelet runs in the stack's mount namespace, with containerd: the
	// volumes it mounts must be seen by runc, and its fixed paths are the stack's.
	if err := n.spawn("kubelet", true, n.Bins.Kubelet,
		"--config="+kubeletConfig, "--kubeconfig="+kubeletKubeconfig,
		"--root-dir="+filepath.Join(n.Dir, "kubelet"), "--cert-dir="+filepath.Join(n.Dir, "kubelet-certs"),
		"--hostname-override="+n.Name, "--node-ip="+n.IP); err != nil {
		return err
	}
	if err := n.WaitNodeReady(ctx, 120*time.Second); err != nil {
		return err
	}
	n.logf("node %s Ready %v after etcd started", n.Name, time.Since(t0).Round(time.Millisecond))
	// Pods are refused until the service-account controller made "default".
	return n.waitAPI(ctx, "/api/v1/namespaces/default/serviceaccounts/default", 60*time.Second)
}

// containerdEtc is the node's /etc/containerd: a root config (the stack's
// settings) that turns NRI off and imports conf.d; there, the node's CNI and
// registry settings, and unless NRI is to stay off, captrace's drop-in
// deploy/containerd-nri.toml exactly as `make install` ships it.
func (n *Node) containerdEtc(s *stack.Stack) (map[string]string, error) {
	files := map[string]string{
		"config.toml": stack.NodeRootConfig(s, 3, `imports = ["`+stack.NodeConfDir+`/*.toml"]`, stack.NRIOffV3),
		"conf.d/kubernetes-node.toml": fmt.Sprintf(`# The Kubernetes e2e node's network and registry (test/e2e/k8s).
version = 3

[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = %q

[plugins.'io.containerd.cri.v1.runtime']
  # Network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q
`, filepath.Join(s.Dir, "registry-hosts"), n.Bins.CNIDir, filepath.Join(s.Dir, "cni", "net.d")),
	}
	if !n.containerd.NRIOff {
		dropIn, err := os.ReadFile(filepath.Join(n.Root, "deploy", "containerd-nri.toml"))
		if err != nil {
			return nil, err
		}
		files["conf.d/captrace-nri.toml"] = string(dropIn)
	}
	return files, nil
}

// SetNRI restarts the node's containerd with captrace's NRI drop-in
// installed (on) or taken away (off: the root config disables NRI). Pods keep
// running; the kubelet reconnects.
func (n *Node) SetNRI(ctx context.Context, on bool) error {
	n.containerd.NRIOff = !on
	return n.Stack.RestartContainerd(ctx)
}

// daemon is one of the cluster's processes.
type daemon struct {
	name string
	*stack.Process
}

// spawn starts one of the cluster's daemons, recorded by the stack.
func (n *Node) spawn(name string, inNamespace bool, argv ...string) error {
	p, err := n.Stack.Spawn(name, argv, inNamespace)
	if err != nil {
		return err
	}
	n.procs = append(n.procs, daemon{name, p})
	return nil
}

// kubeletConfiguration renders the kubelet's config file. The reasons for
// each setting are in test/e2e/k8s/README.md.
func (n *Node) kubeletConfiguration(port int) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupRoot: %s
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
podLogsDir: %s
port: %d
healthzPort: 0
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %s}
authorization: {mode: AlwaysAllow}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
serializeImagePulls: false
registerNode: true
`, n.Stack.ContainerdSocket(), n.Stack.CgroupParent, filepath.Join(n.Dir, "pod-logs"), port, n.pki.CACert())
}

// writeCNIConfig writes the bridge network (and records the bridge and
// ip_forward, which bridge sets, for teardown).
func (n *Node) writeCNIConfig() error {
	dir := filepath.Join(n.Stack.Dir, "cni", "net.d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := n.Stack.Record("made-links", n.Bridge); err != nil {
		return err
	}
	const ipForward = "/proc/sys/net/ipv4/ip_forward"
	old, err := os.ReadFile(ipForward)
	if err != nil {
		return err
	}
	if err := n.Stack.Record("sysctls", ipForward+" "+strings.TrimSpace(string(old))); err != nil {
		return err
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "captrace-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "dataDir": %q}
    },
    {"type": "loopback"}
  ]
}
`, n.Bridge, n.PodCIDR, filepath.Join(n.Stack.Dir, "cni", "ipam"))
	return os.WriteFile(filepath.Join(dir, "10-bridge.conflist"), []byte(conf), 0o644)
}

// client returns an HTTP client that trusts the PKI's CA and presents who's certificate.
func (p PKI) client(who string) (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(p.ClientCert(who), p.ClientKey(who))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(p.CACert())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}},
	}, nil
}

// waitAPI polls GET path on the API server until it answers 200.
func (n *Node) waitAPI(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.apiURL+path, nil)
		resp, err := n.api.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		if err := n.daemonsAlive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s not 200 after %v: %s", path, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// daemonsAlive fails if one of the cluster's daemons has exited.
func (n *Node) daemonsAlive() error {
	for _, p := range n.procs {
		if p.Exited() {
			return fmt.Errorf("%s (pid %d) exited: %v (its log: %s)", p.name, p.PID(), p.Err(), n.Stack.LogPath(p.name))
		}
	}
	return nil
}

// WaitNodeReady waits until the node reports condition Ready=True.
func (n *Node) WaitNodeReady(ctx context.Context, timeout time.Duration) error {
	return n.WaitFor(ctx, timeout, "node "+n.Name+" Ready", func() (bool, string) {
		out, err := n.Kubectl(ctx, "get", "node", n.Name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return err == nil && out == "True", out
	})
}

// WaitFor polls cond every 250 ms until it holds or timeout passes; the
// error names what was awaited and cond's last detail.
func (n *Node) WaitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return nil
		}
		if err := n.daemonsAlive(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s (last: %s)", timeout, what, strings.TrimSpace(detail))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Kubectl runs kubectl with the admin's kubeconfig in the repository's root
// (so `-k deploy/kubernetes` is the README's path) and returns its stdout.
func (n *Node) Kubectl(ctx context.Context, args ...string) (string, error) {
	return n.KubectlStdin(ctx, "", args...)
}

// KubectlStdin is Kubectl with stdin.
func (n *Node) KubectlStdin(ctx context.Context, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.Bins.Kubectl, args...)
	cmd.Dir = n.Root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+n.Kubeconfig)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// LogTails returns the last lines of each daemon's log.
func (n *Node) LogTails(lines int) string {
	var b strings.Builder
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"} {
		data, err := os.ReadFile(n.Stack.LogPath(name))
		if err != nil {
			continue
		}
		l := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(l) > lines {
			l = l[len(l)-lines:]
		}
		fmt.Fprintf(&b, "--- %s log (%s), last %d lines:\n%s\n", name, n.Stack.LogPath(name), lines, strings.Join(l, "\n"))
	}
	return b.String()
}

// Stop tears the node down as the recipe says: pods through the API (while
// the kubelet runs), then the daemons by PID (the kubelet first, the API
// server with SIGKILL: it ignores SIGTERM for over 20 s), then the stack
// (pods through CRI so CNI DEL runs, containerd, mounts, the cgroups under
// the node's cgroup root on every hierarchy, the bridge, ip_forward, the
// directories made for the namespace). Safe to call more than once.
func (n *Node) Stop() {
	if n.Stack != nil && n.api != nil && n.daemonsAlive() == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		if err := n.deleteAllPods(ctx); err != nil {
			n.logf("teardown: %v", err)
		}
		cancel()
	}
	for i := len(n.procs) - 1; i >= 0; i-- {
		grace := 10 * time.Second
		if n.procs[i].name == "kube-apiserver" {
			grace = 0
		}
		n.procs[i].Stop(grace)
	}
	n.procs = nil
	if n.Stack != nil {
		n.Stack.Stop()
		n.Stack = nil
	}
	if n.registry != nil {
		n.registry.Close()
		n.registry = nil
	}
}

// deleteAllPods deletes every namespace's workloads and pods through the API
// and waits until the kubelet has removed their containers.
func (n *Node) deleteAllPods(ctx context.Context) error {
	var errs []error
	for _, kind := range []string{"daemonsets", "deployments", "replicasets", "pods"} {
		if _, err := n.Kubectl(ctx, "delete", kind, "--all", "--all-namespaces", "--wait=false"); err != nil {
			errs = append(errs, err)
		}
	}
	err := n.WaitFor(ctx, 60*time.Second, "every pod deleted", func() (bool, string) {
		out, err := n.Kubectl(ctx, "get", "pods", "--all-namespaces", "-o", "name")
		return err == nil && out == "", out
	})
	return errors.Join(append(errs, err)...)
}

// freePorts returns k distinct TCP ports free on loopback now.
func freePorts(k int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range k {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// defaultRouteIPv4 is the host's IPv4 address on the interface of its
// default route: the node's InternalIP, which kubectl logs/exec reach.
func defaultRouteIPv4() (string, error) {
	data, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 2 || f[1] != "00000000" {
			continue
		}
		ifc, err := net.InterfaceByName(f[0])
		if err != nil {
			return "", err
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return "", err
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				return ipn.IP.String(), nil
			}
		}
	}
	return "", errors.New("no IPv4 address on the default route's interface: the node needs one for its InternalIP")
}
