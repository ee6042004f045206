package cachepush

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/queue"
)

// disputedEvent waits for the disputed event of path and decodes it.
func (f *fixture) disputedEvent(t *testing.T, path string) Dispute {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		for _, m := range f.events {
			var d Dispute
			if strings.HasSuffix(m.Subject, "."+EventDisputed) && json.Unmarshal(m.Data, &d) == nil && d.StorePath == path {
				f.mu.Unlock()
				return d
			}
		}
		f.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no disputed event for %s", path)
	return Dispute{}
}

// TestDisputeExplained: two builders disagree on a file that embeds its
// build time. The disputed event carries a summary naming the file and
// the cause, and DiffPath (provenix diff) reads both staged NARs and
// shows the lines that differ.
func TestDisputeExplained(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 2, nil)
	now := time.Now().UTC()
	na := fileNAR(t, "hello\nbuilt "+now.Format(time.RFC3339)+"\n", false)
	nb := fileNAR(t, "hello\nbuilt "+now.Add(97*time.Second).Format(time.RFC3339)+"\n", false)
	path := storePath("stamp")
	for b, n := range map[string][]byte{"b0": na, "b1": nb} {
		r, d := cf.result(t, drvResult{name: "stamp", builder: b, nar: n})
		cf.process(t, r, d)
	}
	if cf.isVisible(t, path) {
		t.Fatal("published although the builders disagree")
	}
	d := cf.disputedEvent(t, path)
	if d.Summary == nil || d.Summary.Differing != 1 || len(d.Summary.Files) != 1 || d.Summary.Files[0] != "/" ||
		len(d.Summary.Causes) == 0 || d.Summary.Causes[0] != nardiff.CauseTimestamp || d.Summary.Error != "" {
		t.Fatalf("dispute summary %+v", d.Summary)
	}

	if bc := d.BuilderCauses(); len(bc) != 2 || len(bc["b0"]) != 1 || bc["b1"][0] != nardiff.CauseTimestamp {
		t.Errorf("builder causes %v", bc)
	}

	pd, err := DiffPath(testctx.New(t, 60*time.Second), cf.conn, cf.conn, cf.pol, testTenant, path, nardiff.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if pd.Verdict != VerdictDisputed || len(pd.NARs) != 2 || len(pd.Comparisons) != 1 || pd.Comparisons[0].Report == nil || pd.Comparisons[0].Error != "" {
		t.Fatalf("diff: %+v", pd)
	}
	text := pd.Text()
	for _, want := range []string{"built " + now.Format(time.RFC3339), "built " + now.Add(97*time.Second).Format(time.RFC3339), "cause: timestamp", "from b0", "from b1"} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q in:\n%s", want, text)
		}
	}

	// A builder that voted one NAR and staged other bytes under its key:
	// the comparison is refused, not a report of made-up differences.
	fake := fileNAR(t, "hello\nbuilt by nobody at all\n", false)
	if err := cf.conn.DeleteStaged(testctx.New(t, 60*time.Second), pd.NARs[1].StagingKey); err != nil {
		t.Fatal(err)
	}
	if _, err := cf.conn.Stage(testctx.New(t, 60*time.Second), pd.NARs[1].StagingKey, bytes.NewReader(fake)); err != nil {
		t.Fatal(err)
	}
	pd, err = DiffPath(testctx.New(t, 60*time.Second), cf.conn, cf.conn, cf.pol, testTenant, path, nardiff.Options{})
	if err != nil || len(pd.Comparisons) != 1 || pd.Comparisons[0].Report != nil || !strings.Contains(pd.Comparisons[0].Error, ErrStagedMismatch.Error()) {
		t.Fatalf("diff with a staged NAR other than voted: %v %+v", err, pd.Comparisons)
	}

	// A staged NAR gone (expired, collected): the comparison says so.
	if err := cf.conn.DeleteStaged(testctx.New(t, 60*time.Second), pd.NARs[1].StagingKey); err != nil {
		t.Fatal(err)
	}
	pd, err = DiffPath(testctx.New(t, 60*time.Second), cf.conn, cf.conn, cf.pol, testTenant, path, nardiff.Options{})
	if err != nil || len(pd.Comparisons) != 1 || pd.Comparisons[0].Report != nil || !strings.Contains(pd.Comparisons[0].Error, "staged NAR") {
		t.Fatalf("diff with a NAR gone: %v %+v", err, pd.Comparisons)
	}
	if !strings.Contains(pd.Text(), "error: ") {
		t.Errorf("text does not say why:\n%s", pd.Text())
	}
}

// TestDiffNothingToDiff: builders that agree on the NAR (and disagree on
// references only) leave nothing to compare: ErrNothingToDiff, and the
// disputed event carries no summary.
func TestDiffNothingToDiff(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 2, nil)
	n := fileNAR(t, "same", false)
	path := storePath("same")
	dep := storePath("dep")
	r, d := cf.result(t, drvResult{name: "same", builder: "b0", nar: n})
	cf.process(t, r, d)
	r, d = cf.result(t, drvResult{name: "same", builder: "b1", nar: n, refs: []string{dep}})
	cf.pusher.Process(testctx.New(t, 60*time.Second), subject(r), d, r.MsgID())
	if ev := cf.disputedEvent(t, path); ev.Summary != nil {
		t.Errorf("summary for a dispute on references: %+v", ev.Summary)
	}
	_, err := DiffPath(testctx.New(t, 60*time.Second), cf.conn, cf.conn, cf.pol, testTenant, path, nardiff.Options{})
	if !errors.Is(err, ErrNothingToDiff) {
		t.Fatalf("err = %v, want ErrNothingToDiff", err)
	}
}

// TestDisputeEvidenceHeld: a dispute holds each distinct staged NAR
// against staging GC; when a third builder settles it, the hold goes.
func TestDisputeEvidenceHeld(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 3, nil)
	ctx := testctx.New(t, 60*time.Second)
	na, nb := fileNAR(t, "one", false), fileNAR(t, "two", false)
	path := storePath("ev")
	for b, n := range map[string][]byte{"b0": na, "b1": nb} {
		r, d := cf.result(t, drvResult{name: "ev", builder: b, nar: n})
		cf.process(t, r, d)
	}
	raw, err := cf.conn.KVGet(ctx, queue.BucketWaiting, queue.EvidenceKey(testTenant, path))
	if err != nil {
		t.Fatalf("no evidence record: %v", err)
	}
	var ev queue.Evidence
	if err := json.Unmarshal(raw, &ev); err != nil || len(ev.StagingKeys) != 2 || ev.StorePath != path {
		t.Fatalf("evidence %s: %v", raw, err)
	}
	gc := queue.StagingGCOptions{MaxAge: time.Millisecond, Now: time.Now().Add(time.Hour), DryRun: true}
	rep, err := cf.conn.CollectStaging(ctx, gc)
	if err != nil || rep.Held != 2 {
		t.Fatalf("staging GC: %+v %v, want both NARs held", rep, err)
	}
	for _, k := range ev.StagingKeys {
		for _, o := range rep.Objects {
			if o.Key == k {
				t.Errorf("held NAR %s would be collected", k)
			}
		}
	}

	r, d := cf.result(t, drvResult{name: "ev", builder: "b2", nar: na})
	cf.process(t, r, d)
	if !cf.isVisible(t, path) {
		t.Fatal("not published after the third vote agreed")
	}
	if _, err := cf.conn.KVGet(ctx, queue.BucketWaiting, queue.EvidenceKey(testTenant, path)); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("evidence still held after agreement: %v", err)
	}
	if rep, err = cf.conn.CollectStaging(ctx, gc); err != nil || rep.Held != 0 {
		t.Fatalf("staging GC after agreement: %+v %v", rep, err)
	}
}
