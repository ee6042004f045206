package nardiff

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"
)

// FuzzDiff: any pair of inputs yields a report or an error within the
// limits and the deadline; never a panic, and a NAR equals itself.
func FuzzDiff(f *testing.F) {
	f.Add(narOf(f, ent{path: "/a", data: "x"}), narOf(f, ent{path: "/a", data: "y"}))
	f.Add(narOf(f, ent{path: "/a", dir: true}, ent{path: "/a/b", link: "c"}), narOf(f, ent{path: "/a", data: "z"}))
	f.Add(narOf(f, ent{path: "/g.gz", data: gz(f, "one", build)}), narOf(f, ent{path: "/g.gz", data: gz(f, "two", build)}))
	f.Add(narOf(f, ent{path: "/t", data: tarOf(f, []string{"a"}, map[string]string{"a": "1"}, build)}), narOf(f, ent{path: "/t", data: tarOf(f, []string{"a"}, map[string]string{"a": "2"}, build)}))
	f.Add(narOf(f, ent{path: "/z", data: zipOf(f, map[string]string{"m": "1"}, []string{"m"}, build)}), []byte("nix-archive-1"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := Diff(ctx, bytes.NewReader(a), bytes.NewReader(b), Options{BuildTime: build, Limits: SummaryLimits})
		if r == nil {
			t.Fatal("nil report")
		}
		_ = r.Text()
		_ = r.Summary(3).String()
		if _, jerr := json.Marshal(r); jerr != nil {
			t.Fatal(jerr)
		}
		if err == nil && bytes.Equal(a, b) && !r.Identical() {
			t.Fatalf("a NAR differs from itself:\n%s", r.Text())
		}
	})
}
