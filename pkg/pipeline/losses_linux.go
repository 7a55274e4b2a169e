package pipeline

import (
	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/output"
)

// The daemon's ring and sink report losses per container.
var (
	_ KernelLosses = (*bpf.Tracer)(nil)
	_ SinkLosses   = (*output.Fanout)(nil)
)
