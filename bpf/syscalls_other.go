//go:build !amd64 && !arm64

package bpf

// syscallNames is empty where no table is generated: numbers print as SYS_<n>.
var syscallNames = [...]string{0: ""}
