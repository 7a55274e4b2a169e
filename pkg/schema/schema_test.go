package schema

import (
	"os"
	"strings"
	"testing"
)

// TestREADMETables holds README's field tables to EventFields and
// SummaryFields. CAPTRACE_UPDATE_README=1 rewrites them from the schema.
func TestREADMETables(t *testing.T) {
	const path = "../../README.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	for _, c := range []struct {
		marker string
		fields []Field
	}{
		{"schema:events", EventFields},
		{"schema:summaries", SummaryFields},
		{"schema:throttles", ThrottleFields},
	} {
		begin, end := "<!-- "+c.marker+" -->\n", "<!-- /"+c.marker+" -->"
		i, j := strings.Index(readme, begin), strings.Index(readme, end)
		if i < 0 || j < i {
			t.Errorf("%s: no table between %q and %q", path, strings.TrimSpace(begin), end)
			continue
		}
		want := MarkdownTable(c.fields)
		if got := readme[i+len(begin) : j]; got != want {
			if os.Getenv("CAPTRACE_UPDATE_README") == "1" {
				readme = readme[:i+len(begin)] + want + readme[j:]
				continue
			}
			t.Errorf("%s: the %s table differs from pkg/schema (CAPTRACE_UPDATE_README=1 go test ./pkg/schema rewrites it); want:\n%s", path, c.marker, want)
		}
	}
	if os.Getenv("CAPTRACE_UPDATE_README") == "1" && readme != string(data) {
		if err := os.WriteFile(path, []byte(readme), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNamesUnique: a reader tells fields apart by name, in either format.
func TestNamesUnique(t *testing.T) {
	for _, fields := range [][]Field{EventFields, SummaryFields, ThrottleFields} {
		keys, journal := map[string]bool{}, map[string]bool{}
		for _, f := range fields {
			if f.Key == "" && f.Journal == "" || f.Type == "" || f.Meaning == "" {
				t.Errorf("incomplete field %+v", f)
			}
			if f.Key != "" && keys[f.Key] || f.Journal != "" && journal[f.Journal] {
				t.Errorf("field %+v named twice", f)
			}
			if strings.HasPrefix(f.Journal, "_") {
				t.Errorf("%s: fields starting with _ are journald's own", f.Journal)
			}
			keys[f.Key], journal[f.Journal] = true, true
		}
	}
}
