package advisor

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// codeFrames is how many named user frames CodeOf shows.
const codeFrames = 3

// maxCodeLen bounds what CodeOf returns (frames come from pod authors' binaries).
const maxCodeLen = 512

// wrapperPrefixes are frames between a program and the system call that
// name no decision of its author: Go's runtime and syscall packages.
var wrapperPrefixes = []string{"runtime.", "internal/runtime/", "syscall.", "golang.org/x/sys/unix."}

// CodeOf names the code behind a check from its user stack (schema.UserStack:
// frames "function+0xoff (module)", innermost first): the top named frames
// past the language's syscall wrappers, "setpriority ← main (nice)", the
// module of the last frame shown in parentheses. A stack with no named frame
// reads "unnamed code (module+0xoff)": a stripped binary.
func CodeOf(userStack string) string {
	var names []string
	var module, unnamed, wrapper string
	for _, frame := range strings.Split(userStack, ";") {
		if len(names) == codeFrames {
			break
		}
		name, mod, named := splitFrame(frame)
		if !named {
			if unnamed == "" && frame != "" {
				unnamed = frame
			}
			continue
		}
		if isWrapper(name) && len(names) == 0 {
			wrapper = name // the outermost wrapper names the call: unix.Setpriority
			continue
		}
		if len(names) == 0 && wrapper != "" {
			names = append(names, wrapper[strings.LastIndexByte(wrapper, '/')+1:])
		}
		names = append(names, name)
		module = mod
	}
	var out string
	switch {
	case len(names) > 0:
		out = strings.Join(names, " ← ")
		if module != "" {
			out += " (" + module + ")"
		}
	case unnamed != "":
		out = "unnamed code (" + unnamed + ")"
	default:
		return ""
	}
	if len(out) > maxCodeLen {
		out = out[:maxCodeLen] + "…"
	}
	return printableCode(out)
}

// printableCode escapes control characters and invalid UTF-8: a report
// file is untrusted, and the code lands in YAML comments and table lines.
func printableCode(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && s[i] >= 0x80 && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// splitFrame reads "function+0xoff (module)". Stripped ("module+0xoff") and
// unknown ("[unknown] 0x… (module)") frames are not named.
func splitFrame(frame string) (name, module string, named bool) {
	frame = strings.TrimSpace(frame)
	body, mod, hasModule := strings.Cut(frame, " (")
	if !hasModule || strings.HasPrefix(frame, "[") {
		return "", "", false
	}
	name, _, _ = strings.Cut(body, "+0x")
	return name, strings.TrimSuffix(mod, ")"), name != ""
}

func isWrapper(name string) bool {
	for _, p := range wrapperPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
