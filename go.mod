module github.com/captrace/captrace

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/sirupsen/logrus v1.10.2
	golang.org/x/sys v0.50.0
)

require github.com/cilium/ebpf v0.22.0 // indirect

tool github.com/cilium/ebpf/cmd/bpf2go
