package forgestatus

import (
	"fmt"
	"strings"
	"testing"

	"codeberg.org/provenix/provenix/forgeapi"
	"codeberg.org/provenix/provenix/queue"
)

// TestRecordStatus: a commit's status is the worst verdict of its paths,
// and a publication is final.
func TestRecordStatus(t *testing.T) {
	const (
		hello = "/nix/store/9ri7p1kdl1d1vavgmc3mq0rkdkmvcl0f-hello-2.12"
		dep   = "/nix/store/1ad7bmqh6ykl1xbq8nyv9j8s6c0vy5rg-dep"
		cache = "https://cache.example.org"
	)
	pub := pathVerdict{Kind: queue.EventPublished, Note: "2 of 2 independent builders agree"}
	dis := pathVerdict{Kind: queue.EventDisputed, Note: "2 builders gave 2 different answers"}
	inc := pathVerdict{Kind: "incomplete", Note: "1 reference missing after 1h0m0s"}
	var r record
	if !r.merge(hello, pub) || r.merge(hello, pub) {
		t.Fatal("a new verdict must change the record, the same one again must not")
	}
	if s := r.status("x86_64-linux", cache); s.State != forgeapi.StateSuccess || s.Description != pub.Note ||
		s.TargetURL != cache+"/9ri7p1kdl1d1vavgmc3mq0rkdkmvcl0f.provenance.json" || s.Context() != "provenix/x86_64-linux" {
		t.Errorf("one published path: %+v", s)
	}
	if r.merge(hello, dis) || r.merge(hello, inc) {
		t.Error("a late dispute or timeout changed a published path")
	}
	gen := r.Gen
	if !r.merge(dep, inc) || r.Gen != gen+1 {
		t.Fatal("incomplete path not recorded")
	}
	if s := r.status("x86_64-linux", cache); s.State != forgeapi.StateError || s.Description != "1 of 2 paths incomplete; dep: "+inc.Note ||
		!strings.Contains(s.TargetURL, "1ad7bmqh6ykl1xbq8nyv9j8s6c0vy5rg") {
		t.Errorf("one of two incomplete: %+v", s)
	}
	r.merge(dep, dis)
	if s := r.status("x86_64-linux", cache); s.State != forgeapi.StateFailure || s.Description != "1 of 2 paths disputed; dep: "+dis.Note || s.TargetURL != "" {
		t.Errorf("one of two disputed: %+v", s)
	}
	// More votes settle the dispute.
	r.merge(dep, pub)
	if s := r.status("x86_64-linux", ""); s.State != forgeapi.StateSuccess || s.Description != "2 paths published; dep: "+pub.Note || s.TargetURL != "" {
		t.Errorf("both published: %+v", s)
	}
}

// TestRecordBounded: published paths past maxPaths are counted, not
// named; a dispute is always named.
func TestRecordBounded(t *testing.T) {
	var r record
	pub := pathVerdict{Kind: queue.EventPublished, Note: "ok"}
	for i := range maxPaths + 10 {
		r.merge("/nix/store/"+strings.Repeat("a", 31)+string(rune('a'+i%26))+"-p"+strings.Repeat("x", i/26), pub)
	}
	if len(r.Paths) != maxPaths || r.More != 10 {
		t.Fatalf("%d named, %d more", len(r.Paths), r.More)
	}
	r.merge("/nix/store/"+strings.Repeat("b", 32)+"-bad", pathVerdict{Kind: queue.EventDisputed, Note: "no"})
	if s := r.status("x86_64-linux", ""); s.State != forgeapi.StateFailure || !strings.HasPrefix(s.Description, "1 of 1011 paths disputed; bad") {
		t.Errorf("%+v", s)
	}
}

// TestRecordBoundedAnyKind: a builder sending paths that never complete
// (or are disputed) without end does not grow the record past maxNamed
// names; the rest are counted, and a counted dispute still decides the
// status.
func TestRecordBoundedAnyKind(t *testing.T) {
	var r record
	name := func(i int) string {
		return fmt.Sprintf("/nix/store/%032d-p", i)
	}
	for i := range maxNamed + 7 {
		r.merge(name(i), pathVerdict{Kind: "incomplete", Note: "waits"})
	}
	for i := range 5 {
		r.merge(name(maxNamed+100+i), pathVerdict{Kind: queue.EventDisputed, Note: "no"})
	}
	if len(r.Paths) != maxNamed || r.Counted["incomplete"] != 7 || r.Counted[queue.EventDisputed] != 5 {
		t.Fatalf("%d named, counted %v", len(r.Paths), r.Counted)
	}
	s := r.status("x86_64-linux", "https://cache.example")
	if s.State != forgeapi.StateFailure || !strings.HasPrefix(s.Description, fmt.Sprintf("5 of %d paths disputed; others:", maxNamed+12)) || s.TargetURL != "" {
		t.Errorf("%+v", s)
	}
}
