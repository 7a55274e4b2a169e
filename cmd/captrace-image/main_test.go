package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestRunRejectsArguments(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"-o", "x.tar", "extra"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unexpected argument "extra"`) {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}
