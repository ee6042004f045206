package server

import "testing"

func TestRequestKind(t *testing.T) {
	for p, want := range map[string]string{
		"/0123456789abcdfghijklmnpqrsvwxyz.narinfo":         "narinfo",
		"/nar/0123456789abcdfghijklmnpqrsvwxyz.nar.zst":     "nar",
		"/0123456789abcdfghijklmnpqrsvwxyz.provenance.json": "other",
		"/nix-cache-info": "other",
		"/../etc/passwd":  "other",
		"/foo.narinfo":    "other",
		"/metrics":        "other",
	} {
		if got := requestKind(p); got != want {
			t.Errorf("requestKind(%q) = %q, want %q", p, got, want)
		}
	}
}
