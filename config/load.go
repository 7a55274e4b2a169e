package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// kind is the TOML type a key must have.
type kind int

const (
	kindString kind = iota
	kindBool
	kindInt
	kindStringList
)

func (k kind) String() string {
	return [...]string{"a string", "a boolean (true or false)", "an integer", "a list of strings, e.g. [\"a\", \"b\"]"}[k]
}

type field struct {
	name string
	kind kind
}

type table struct {
	table string
	keys  []field
}

// schema lists every key of the file and its type, table by table, in the
// order of the documented example.
var schema = []table{
	{"nri", []field{{"socket", kindString}, {"plugin_name", kindString}, {"plugin_index", kindString}}},
	{"trace", []field{{"audit_only", kindBool}, {"unique", kindBool}, {"stacks", kindString}, {"allow_namespaces", kindStringList}, {"deny_namespaces", kindStringList}}},
	{"tracer", []field{{"max_containers", kindInt}, {"dedup_entries", kindInt}, {"ring_buffer_bytes", kindInt}, {"tier", kindString}, {"stack_depth", kindInt}}},
	{"output", []field{{"sinks", kindStringList}, {"file", kindString}, {"queue_size", kindInt}}},
}

// Load reads the file at path over Defaults() and validates the result. A
// missing file is not an error: Load returns the defaults and found=false, and
// the caller says so in its log. Every error is an *Error (several are joined).
func Load(path string) (cfg Config, found bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		cfg = Defaults()
		return cfg, false, nil
	}
	if err != nil {
		return Defaults(), false, &Error{File: path, Reason: fmt.Sprintf("cannot read the file: %v", err)}
	}
	cfg, err = Parse(path, data)
	return cfg, true, err
}

// Parse decodes data (named name in errors) over Defaults() and validates it.
func Parse(name string, data []byte) (Config, error) {
	cfg := Defaults()
	cfg.file = name
	cfg.lines = keyLines(data)

	// A first pass into a plain map catches syntax errors and lets us check
	// each known key's type ourselves, so the message can say what is expected.
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return cfg, &Error{File: name, Line: pe.Position.Line, Key: pe.LastKey, Reason: "invalid TOML: " + pe.Message}
		}
		return cfg, &Error{File: name, Reason: "invalid TOML: " + err.Error()}
	}
	if errs := checkTypes(&cfg, raw); len(errs) > 0 {
		return cfg, errors.Join(errs...)
	}

	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		// checkTypes should have caught it; keep the decoder's own words.
		return cfg, &Error{File: name, Reason: err.Error()}
	}
	if errs := unknownKeys(&cfg, md.Undecoded()); len(errs) > 0 {
		return cfg, errors.Join(errs...)
	}
	return cfg, cfg.Validate()
}

func checkTypes(cfg *Config, raw map[string]any) []error {
	var errs []error
	for _, table := range schema {
		v, ok := raw[table.table]
		if !ok {
			continue
		}
		values, ok := v.(map[string]any)
		if !ok {
			errs = append(errs, &Error{File: cfg.file, Line: cfg.lines[table.table], Key: table.table,
				Reason: fmt.Sprintf("expected a table [%s], got %s", table.table, describe(v))})
			continue
		}
		for _, key := range table.keys {
			v, ok := values[key.name]
			if !ok || hasKind(v, key.kind) {
				continue
			}
			dotted := table.table + "." + key.name
			errs = append(errs, &Error{File: cfg.file, Line: cfg.lines[dotted], Key: dotted,
				Reason: fmt.Sprintf("wrong type: expected %s, got %s", key.kind, describe(v))})
		}
	}
	return errs
}

func hasKind(v any, k kind) bool {
	switch k {
	case kindString:
		_, ok := v.(string)
		return ok
	case kindBool:
		_, ok := v.(bool)
		return ok
	case kindInt:
		_, ok := v.(int64)
		return ok
	case kindStringList:
		list, ok := v.([]any)
		if !ok {
			return false
		}
		for _, e := range list {
			if _, ok := e.(string); !ok {
				return false
			}
		}
		return true
	}
	return false
}

// describe names a decoded TOML value's type, with the value when short.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("string %q", v)
	case bool:
		return fmt.Sprintf("boolean %t", v)
	case int64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return fmt.Sprintf("float %v", v)
	case []any:
		for _, e := range v {
			if _, ok := e.(string); !ok {
				return fmt.Sprintf("a list holding %s", describe(e))
			}
		}
		return "a list"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date/time"
	}
	return fmt.Sprintf("%T", v)
}

// unknownKeys turns MetaData.Undecoded into errors naming each key and the
// keys its table knows.
func unknownKeys(cfg *Config, undecoded []toml.Key) []error {
	var errs []error
	reported := map[string]bool{}
	for _, k := range undecoded {
		// An unknown table's keys are undecoded too: report the table only.
		if len(k) > 1 && reported[k[:len(k)-1].String()] {
			reported[k.String()] = true
			continue
		}
		reported[k.String()] = true
		e := &Error{File: cfg.file, Line: cfg.lines[k.String()], Key: k.String()}
		if len(k) == 1 {
			e.Reason = fmt.Sprintf("unknown key: expected one of the tables %s", strings.Join(tableNames(), ", "))
		} else {
			known := tableKeys(k[0])
			e.Reason = fmt.Sprintf("unknown key: [%s] knows %s", k[0], strings.Join(known, ", "))
			if s := closest(k[len(k)-1], known); s != "" {
				e.Reason += fmt.Sprintf(" (did you mean %s?)", s)
			}
		}
		errs = append(errs, e)
	}
	return errs
}

func tableNames() []string {
	var names []string
	for _, t := range schema {
		names = append(names, "["+t.table+"]")
	}
	return names
}

func tableKeys(table string) []string {
	for _, t := range schema {
		if t.table == table {
			var names []string
			for _, k := range t.keys {
				names = append(names, k.name)
			}
			return names
		}
	}
	return nil
}

// closest returns the known name within edit distance 2 of s, if any.
func closest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(s, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var (
	tableLine = regexp.MustCompile(`^\s*\[\s*([A-Za-z0-9_.\-"' ]+?)\s*\]`)
	keyLine   = regexp.MustCompile(`^\s*([A-Za-z0-9_.\-"' ]+?)\s*=`)
)

// keyLines finds the line of each "table.key" and "[table]" in a config file
// written the usual way (one key per line). It only serves error messages:
// keys it cannot place get line 0 and the message names the key alone.
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := tableLine.FindStringSubmatch(line); m != nil && !strings.HasPrefix(strings.TrimSpace(line), "[[") {
			table = unquoteKey(m[1])
			if _, ok := lines[table]; !ok {
				lines[table] = n
			}
			continue
		}
		if m := keyLine.FindStringSubmatch(line); m != nil {
			key := unquoteKey(m[1])
			if table != "" {
				key = table + "." + key
			}
			if _, ok := lines[key]; !ok {
				lines[key] = n
			}
		}
	}
	return lines
}

func unquoteKey(s string) string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}

// Keys lists every dotted key of the schema, sorted (for docs and tests).
func Keys() []string {
	var keys []string
	for _, t := range schema {
		for _, k := range t.keys {
			keys = append(keys, t.table+"."+k.name)
		}
	}
	sort.Strings(keys)
	return slices.Clip(keys)
}
