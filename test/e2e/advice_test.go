//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// deniedAdvice is the advisor's wording for a capability only ever denied.
const deniedAdvice = "denied: add it only if the workload failed without it"

// wantAdvice is the seed's conclusion for one container.
type wantAdvice struct {
	namespace, pod, container string
	// add is the exact recommended add list (Kubernetes names).
	add []string
	// deniedOnly must be listed apart as denied, and not in add.
	deniedOnly []string
}

// reportContainer is the part of `captrace report --format json` the e2e reads.
type reportContainer struct {
	Container struct {
		ID           string `json:"container_id"`
		Name         string `json:"container"`
		Namespace    string `json:"namespace"`
		Pod          string `json:"pod"`
		WorkloadKind string `json:"workload_kind"`
		Workload     string `json:"workload"`
		Image        string `json:"image"`
	} `json:"container"`
	// Over several pods (captrace report by workload): how many, how many
	// with all their checks read, on how many nodes.
	Pods          int      `json:"pods"`
	PodsRead      int      `json:"pods_read"`
	Nodes         int      `json:"nodes"`
	NonRootDenied []string `json:"non_root_denied"`
	Partial       bool     `json:"partial"`
	Recommended   struct {
		Drop []string `json:"drop"`
		Add  []string `json:"add"`
	} `json:"recommended"`
	DeniedOnly      []string    `json:"denied_only"`
	Probed          []string    `json:"probed"`
	RuntimeOnly     []string    `json:"runtime_only"`
	Rows            []reportRow `json:"rows"`
	SecurityContext string      `json:"security_context_yaml"`
}

type reportRow struct {
	Cap   string `json:"cap"`
	Class string `json:"class"`
	Pods  int    `json:"pods"`
	Nodes int    `json:"nodes"`
}

type reportJSON struct {
	Input struct {
		Lines   int `json:"lines"`
		Events  int `json:"events"`
		Skipped int `json:"skipped"`
	} `json:"input"`
	Containers []reportContainer `json:"containers"`
}

// checkAdvice stops and removes container id, then checks the seed's
// conclusion three ways: the summary entry the daemon wrote at the stop, in
// the logfmt file and in the journal (which must agree), and `captrace
// report` over the private journal (json) and over the logfmt file (yaml).
func checkAdvice(t *testing.T, ctx context.Context, id string, want wantAdvice) {
	t.Helper()
	t0 := time.Now()
	defer func() { t.Logf("advice checked in %v", time.Since(t0).Round(time.Millisecond)) }()
	if err := st.RemoveContainer(ctx, id); err != nil {
		t.Fatal(st.Fail("stop and remove container "+want.container, err))
	}
	b, err := st.WaitSummaries(ctx, 10*time.Second, id)
	if err != nil {
		t.Fatal(st.Fail("wait for the summary entry of "+want.container, err))
	}
	// One entry per container: the stop makes it, the remove must not add one.
	time.Sleep(300 * time.Millisecond)
	if b, err = st.WaitSummaries(ctx, time.Second, id); err != nil {
		t.Fatal(st.Fail("read the summary entries of "+want.container, err))
	}
	if len(b.Logfmt) != 1 || len(b.Journal) != 1 {
		t.Errorf("%d summary entries of %s in the logfmt file and %d in the journal, want 1 each:\n%s%s", len(b.Logfmt), want.container, len(b.Journal), joinLines(b.Logfmt), joinLines(b.Journal))
	}
	lf, jr := b.Logfmt[0], b.Journal[0]
	if strings.TrimPrefix(lf.String(), lf.Source) != strings.TrimPrefix(jr.String(), jr.Source) || lf.PodSpec != jr.PodSpec || lf.Message != jr.Message {
		t.Errorf("the logfmt file and the journal disagree on the summary:\n  %v\n  %v", lf, jr)
	}
	for _, s := range []stack.Summary{lf, jr} {
		if s.Namespace != want.namespace || s.Pod != want.pod || s.Container != want.container {
			t.Errorf("%s summary names %s/%s/%s, want %s/%s/%s", s.Source, s.Namespace, s.Pod, s.Container, want.namespace, want.pod, want.container)
		}
		checkRecommendation(t, s.Source+" summary entry", s.Drop, s.Add, s.DeniedOnly, s.Probed, s.Runtime, want)
		if !s.Partial {
			t.Errorf("%s summary: a container observed for seconds is marked complete (partial=false): %v", s.Source, s)
		}
		for _, d := range want.deniedOnly {
			if !strings.Contains(s.Message, "denied ["+d) || !strings.Contains(s.Message, "add it only if the workload failed without it") {
				t.Errorf("%s summary message does not show %s as denied apart: %q", s.Source, d, s.Message)
			}
		}
		if !strings.Contains(s.PodSpec, "drop:\n    - ALL\n") {
			t.Errorf("%s summary security_context lacks drop ALL:\n%s", s.Source, s.PodSpec)
		}
	}
	t.Logf("summary entry: %v; %s", lf, lf.Message)

	// captrace report over the private journal, as JSON.
	filter := []string{"--namespace", want.namespace, "--pod", want.pod, "--container", want.container}
	out, _, err := st.Report(ctx, append([]string{"-D", st.JournalDir, "--format", "json"}, filter...)...)
	if err != nil {
		t.Fatal(st.Fail("captrace report -D "+st.JournalDir, err))
	}
	var rep reportJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("captrace report --format json: %v\n%s", err, out)
	}
	if rep.Input.Skipped != 0 || rep.Input.Events == 0 {
		t.Errorf("captrace report -D (journal): read %d events, skipped %d lines of %d, want events and nothing skipped", rep.Input.Events, rep.Input.Skipped, rep.Input.Lines)
	}
	if len(rep.Containers) != 1 {
		t.Fatalf("captrace report -D (journal) --pod %s: %d containers, want 1:\n%s", want.pod, len(rep.Containers), out)
	}
	c := rep.Containers[0]
	if c.Container.ID != id || c.Container.Name != want.container {
		t.Errorf("captrace report (journal): container %s %s, want %s %s", c.Container.Name, c.Container.ID, want.container, id)
	}
	checkRecommendation(t, "captrace report (journal, json)", c.Recommended.Drop, c.Recommended.Add, c.DeniedOnly, c.Probed, c.RuntimeOnly, want)
	if !c.Partial {
		t.Errorf("captrace report (journal): a container observed for seconds is marked complete")
	}
	for _, d := range want.deniedOnly {
		if !slices.ContainsFunc(c.Rows, func(r reportRow) bool { return r.Cap == d && r.Class == "denied" }) {
			t.Errorf("captrace report (journal): no row %s of class denied: %+v", d, c.Rows)
		}
	}
	if c.SecurityContext != lf.PodSpec {
		t.Errorf("captrace report's securityContext differs from the daemon's summary:\n%s---\n%s", c.SecurityContext, lf.PodSpec)
	}

	// The same journal entries piped in: `journalctl -u captrace -o json | captrace report -`.
	entries, err := st.JournalJSON(ctx, "K8S_POD_NAME="+want.pod)
	if err != nil {
		t.Fatal(st.Fail("journalctl -u captrace -o json K8S_POD_NAME="+want.pod, err))
	}
	piped, _, err := st.ReportStdin(ctx, []byte(entries), append(append([]string{"--format", "json"}, filter...), "-")...)
	if err != nil {
		t.Fatal(st.Fail("journalctl -o json | captrace report -", err))
	}
	var repPiped reportJSON
	if err := json.Unmarshal([]byte(piped), &repPiped); err != nil {
		t.Fatalf("journalctl -o json | captrace report - --format json: %v\n%s", err, piped)
	}
	if rep.Input.Events != repPiped.Input.Events || repPiped.Input.Skipped != 0 || !reflect.DeepEqual(rep.Containers, repPiped.Containers) {
		t.Errorf("captrace report: the journal piped on stdin gives another answer than -D:\n-D: %s\nstdin: %s", out, piped)
	}

	// captrace report over the logfmt file, as YAML: the snippet, and the
	// denied capabilities as comments with their advice.
	yaml, _, err := st.Report(ctx, append([]string{"--input", st.EventFile, "--format", "yaml"}, filter...)...)
	if err != nil {
		t.Fatal(st.Fail("captrace report --input "+st.EventFile, err))
	}
	// One Pod object (a bare pod is its own workload) with the container's
	// capabilities, built from k8s.io/api types.
	wantCaps := "    name: " + want.container + "\n    securityContext:\n      capabilities:\n"
	if len(want.add) > 0 {
		wantCaps += "        add:\n"
		for _, a := range sorted(want.add) {
			wantCaps += "        - " + a + "\n"
		}
	}
	wantCaps += "        drop:\n        - ALL\n"
	if !strings.Contains(yaml, "kind: Pod\nmetadata:\n  name: "+want.pod+"\n  namespace: "+want.namespace+"\n") || !strings.Contains(yaml, wantCaps) {
		t.Errorf("captrace report --input (logfmt) --format yaml lacks the Pod %s with\n%s\nin:\n%s", want.pod, wantCaps, yaml)
	}
	for _, d := range want.deniedOnly {
		if !strings.Contains(yaml, "#   "+d+" granted 0, denied ") || !strings.Contains(yaml, deniedAdvice) {
			t.Errorf("captrace report --format yaml does not show %s apart as %q:\n%s", d, deniedAdvice, yaml)
		}
	}
	t.Logf("captrace report --input %s --format yaml:\n%s", st.EventFile, yaml)
}

// checkRecommendation checks one reading of the advice against the seed's conclusion.
func checkRecommendation(t *testing.T, where string, drop, add, deniedOnly, probed, runtime []string, want wantAdvice) {
	t.Helper()
	if !slices.Equal(drop, []string{"ALL"}) {
		t.Errorf("%s: drop %v, want [ALL]", where, drop)
	}
	if got, w := sorted(add), sorted(want.add); !slices.Equal(got, w) {
		t.Errorf("%s: add %v, want exactly %v (probed %v, runtime %v, denied %v)", where, got, w, probed, runtime, deniedOnly)
	}
	for _, d := range want.deniedOnly {
		if !slices.Contains(deniedOnly, d) {
			t.Errorf("%s: %s not listed as denied-only: %v", where, d, deniedOnly)
		}
		if slices.Contains(add, d) {
			t.Errorf("%s: the denied %s is recommended: add %v", where, d, add)
		}
	}
	// Probes and runc's checks never make a recommendation.
	for _, c := range append(slices.Clone(probed), runtime...) {
		if slices.Contains(add, c) {
			t.Errorf("%s: %s is listed as probe or runtime only, yet recommended: add %v", where, c, add)
		}
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	if s == nil {
		s = []string{}
	}
	return s
}
