package symbolize

import (
	"fmt"
	"strings"
	"unicode"
)

// maxName bounds a symbol or module name taken from a (pod author's) binary.
const maxName = 256

// clean bounds a name from an untrusted file and escapes what would break a
// ';'-separated stack or a log line: ';', control characters, invalid UTF-8.
func clean(s string) string {
	if len(s) > maxName {
		s = s[:maxName] + "…"
	}
	ok := true
	for _, r := range s {
		if r == ';' || r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == unicode.ReplacementChar && s[i] >= 0x80:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == ';' || !unicode.IsPrint(r):
			if r < 0x80 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
