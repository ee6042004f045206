package runner

import (
	"testing"
	"time"

	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/runner/capture"
)

// TestStepEligibleExcludesOtherJobsTime (issue 11, finding 7): a job
// asking through its socket gets attested only what the store registered
// during its own time and no other job's. Before, anything registered
// since the job started was attested, so with capacity 2 a job could
// name a derivation the concurrent job built and have it labelled with
// its own workflow.
func TestStepEligibleExcludesOtherJobsTime(t *testing.T) {
	w := capture.NewWindows(time.Hour)
	t0 := time.Now().Truncate(time.Second).Add(-time.Minute)
	a := w.Begin(t0)
	b := w.Begin(t0.Add(20 * time.Second))
	w.End(b, t0.Add(30*time.Second))
	ok := stepEligible(w, a)
	at := func(d time.Duration) nix.PathInfo { return nix.PathInfo{Registered: t0.Add(d)} }
	if !ok(at(10 * time.Second)) {
		t.Error("a path built while only job A ran is A's")
	}
	if ok(at(25 * time.Second)) {
		t.Error("a path built while job B also ran was attested for job A")
	}
	if ok(at(-10 * time.Second)) {
		t.Error("a path built before job A started was attested for it")
	}
	if !ok(at(45 * time.Second)) {
		t.Error("a path built after B ended, while A still ran, is A's")
	}
}
