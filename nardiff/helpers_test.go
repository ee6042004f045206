package nardiff

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"
)

// ent is one entry of a test NAR: a directory when dir, a symlink when
// link is set, else a regular file.
type ent struct {
	path string
	dir  bool
	link string
	exec bool
	data string
}

// writeNAR writes the entries (sorted the NAR way by the caller) below a
// root directory.
func writeNAR(t testing.TB, w io.Writer, ents []ent) {
	t.Helper()
	nw, err := nar.NewWriter(w)
	if err != nil {
		t.Fatal(err)
	}
	if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}); err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		h := &nar.Header{Path: e.path}
		switch {
		case e.dir:
			h.Type = nar.TypeDirectory
		case e.link != "":
			h.Type, h.LinkTarget = nar.TypeSymlink, e.link
		default:
			h.Type, h.Size, h.Executable = nar.TypeRegular, int64(len(e.data)), e.exec
		}
		if err := nw.WriteHeader(h); err != nil {
			t.Fatalf("%s: %v", e.path, err)
		}
		if h.Type == nar.TypeRegular {
			if _, err := io.WriteString(nw, e.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
}

func narOf(t testing.TB, ents ...ent) []byte {
	var b bytes.Buffer
	writeNAR(t, &b, ents)
	return b.Bytes()
}

func diffBytes(t testing.TB, a, b []byte, o Options) *Report {
	t.Helper()
	r, err := Diff(context.Background(), bytes.NewReader(a), bytes.NewReader(b), o)
	if err != nil {
		t.Fatalf("Diff: %v\n%s", err, r.Text())
	}
	return r
}

// file finds the report's entry for path.
func file(t testing.TB, r *Report, path string) FileDiff {
	t.Helper()
	for _, f := range r.Files {
		if f.Path == path {
			return f
		}
	}
	t.Fatalf("no difference reported for %s:\n%s", path, r.Text())
	return FileDiff{}
}

func hasCause(cs []Cause, k CauseKind) bool {
	for _, c := range cs {
		if c.Kind == k {
			return true
		}
	}
	return false
}

func mustContain(t testing.TB, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("missing %q in:\n%s", sub, s)
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
