module github.com/captrace/captrace

go 1.26.0

require (
	github.com/containerd/cgroups/v3 v3.1.3
	github.com/sirupsen/logrus v1.10.2
	golang.org/x/sys v0.50.0
)

require (
	github.com/cilium/ebpf v0.22.0 // indirect
	github.com/moby/sys/userns v0.1.0 // indirect
)

tool github.com/cilium/ebpf/cmd/bpf2go
