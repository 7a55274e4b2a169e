//go:build !linux

package cgmap

import "errors"

// NewResolver fails: cgroup v2 IDs exist on Linux only.
func NewResolver() (*Resolver, error) { return nil, errors.New("cgmap: cgroup v2 needs Linux") }

// Mode is "unavailable" off Linux.
func Mode() string { return "unavailable" }
