package advisor

import (
	"github.com/spf13/pflag"
)

// ReportHelp is the long help of `captrace report`.
const ReportHelp = `Reads captrace's capability records and prints, per workload (namespace,
Deployment/StatefulSet/DaemonSet/Job/CronJob or pod, container name, image),
the checks seen (cap, granted and denied counts, syscalls, on how many pods
and nodes) and a ready-to-paste securityContext. Replicas and nodes add up;
a container found in several inputs counts once; --by pod gives one entry per
pod. Input: by default the output of
  journalctl -u captrace -o json
which it runs itself; or any number of FILEs (logfmt from the file sink, or
journalctl's JSON, detected line by line, e.g. one journal export per node);
- for stdin. -o yaml: one Kubernetes object per workload; -o patch: a
strategic-merge patch per workload (kubectl patch --patch-file).

--check MANIFEST compares Kubernetes manifests (Deployment, StatefulSet,
DaemonSet, Job, CronJob, Pod; multi-document YAML) with the evidence: exit 0
when they match, 1 when one lacks a used capability, grants an unused one or
keeps the runtime's default set, 2 when a manifest is not a valid object.`

// ReportCommand is `captrace report`: its options, filled by the flags
// AddFlags registers, and Run. cmd/captrace puts the flags on its command
// line; RunReport parses them itself.
type ReportCommand struct {
	f   reportFlags
	env reportEnv
}

// NewReportCommand returns report with its defaults, reading the host's journal.
func NewReportCommand() *ReportCommand { return newReportCommand(hostReportEnv()) }

func newReportCommand(env reportEnv) *ReportCommand {
	return &ReportCommand{env: env}
}

// AddFlags registers report's options on fs: one line per option.
func (c *ReportCommand) AddFlags(fs *pflag.FlagSet) {
	f := &c.f
	fs.StringVarP(&f.input, "input", "i", "", "read records from `FILE` (- for stdin) instead of running journalctl")
	fs.StringVarP(&f.journalDir, "journal-dir", "D", "", "passed to journalctl as -D `DIR`")
	fs.StringVar(&f.unit, "unit", "captrace", "systemd `unit` passed to journalctl -u; empty: match SYSLOG_IDENTIFIER=captrace written by root (_UID=0) instead")
	fs.StringVar(&f.journalctl, "journalctl", c.env.journalctl, "journalctl `binary` to run")
	fs.StringVarP(&f.format, "output", "o", "table", "output `FORMAT`: table, yaml (a Kubernetes object per workload), patch (a strategic-merge patch per workload) or json")
	fs.StringVar(&f.by, "by", ByWorkload, "group the advice by `workload` (namespace, workload, container, image) or by pod")
	fs.StringVar(&f.workloadArg, "workload", "", "only this `KIND/NAME` (deployment/web)")
	fs.StringArrayVar(&f.checks, "check", nil, "compare the Kubernetes `MANIFEST` (file, - for stdin; repeatable) with the evidence")
	fs.StringVar(&f.namespace, "namespace", "", "only this Kubernetes `namespace`")
	fs.StringVar(&f.pod, "pod", "", "only this `pod` name")
	fs.StringVar(&f.container, "container", "", "only this `container` name")
	fs.StringVar(&f.since, "since", "", "only checks at or after `TIME`: a duration back from now (2h, 30m) or a time (RFC 3339, \"2006-01-02 15:04:05\" UTC, 2006-01-02)")
	fs.DurationVar(&f.minWindow, "min-window", DefaultMinWindow, "observation time below which a profile is called partial")
	// --format is the name report had before -o/--output: kept, not shown.
	fs.StringVar(&f.format, "format", "table", "same as --output")
	_ = fs.MarkHidden("format")
}
