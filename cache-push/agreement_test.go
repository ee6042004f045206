package cachepush

import (
	"bytes"
	"encoding/json"
	"errors"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
)

// TestQuorumAgreesOnReferences (issue 11, finding 3): builders that sign
// the same NAR with different references give different answers. Before,
// the quorum agreed on the NAR bytes alone and the narinfo took the
// alphabetically first builder's references, so one builder among the
// agreeing ones could add a reference to any cached path, or drop the
// dependencies that keep live paths from collection. The Deriver is
// written only when every agreeing vote names the same derivation.
func TestQuorumAgreesOnReferences(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 3, nil)
	dep1, dep2, top := storePath("dep1"), storePath("dep2"), storePath("top")
	for _, name := range []string{"dep1", "dep2"} {
		for _, b := range []string{"b0", "b1"} {
			r, d := cf.result(t, drvResult{name: name, builder: b})
			cf.process(t, r, d)
		}
	}
	if !cf.isVisible(t, dep1) || !cf.isVisible(t, dep2) {
		t.Fatal("dependencies not published")
	}

	nar := narOf(t, "top")
	r, d := cf.result(t, drvResult{name: "top", builder: "b0", nar: nar, refs: []string{dep1}})
	cf.process(t, r, d)
	// b1 signs the very same NAR but claims another reference.
	r, d = cf.result(t, drvResult{name: "top", builder: "b1", nar: nar, refs: []string{dep2}, drv: storePath("top-other.drv")})
	cf.pusher.Process(testctx.New(t, 60*time.Second), subject(r), d, r.MsgID())
	if cf.isVisible(t, top) {
		t.Fatal("published although the builders disagree on the references")
	}
	cf.waitEvent(t, EventDisputed, "")

	// A third builder confirms b0's references, from another derivation
	// file with the same output (Nix allows that: fixed-output inputs
	// differ).
	r, d = cf.result(t, drvResult{name: "top", builder: "b2", nar: nar, refs: []string{dep1}, drv: storePath("top-alt.drv")})
	cf.process(t, r, d)
	if !cf.isVisible(t, top) {
		t.Fatal("two builders agree on NAR and references, not published")
	}
	b, err := store.ReadAll(testctx.New(t, 60*time.Second), cf.store, cachelayout.NarinfoKey(top), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ni.References, []string{path.Base(dep1)}) {
		t.Errorf("narinfo references %v, want the agreed %s", ni.References, path.Base(dep1))
	}
	if ni.Deriver != "" {
		t.Errorf("narinfo names deriver %s though the agreeing builders named different ones", ni.Deriver)
	}
}

// TestSameHashPartOtherName (issue 11, finding 8): the same NAR attested
// under <hash>-other-name is refused and leaves the path's provenance
// alone (it used to rewrite the victim's sidecar storePath).
func TestSameHashPartOtherName(t *testing.T) {
	cf := newClosureFixture(t, "", 2, nil)
	real := storePath("real")
	other := path.Dir(real) + "/" + path.Base(real)[:32] + "-other-name"
	nar := narOf(t, "shared")
	r, d := cf.result(t, drvResult{name: "real", builder: "b0", nar: nar})
	cf.process(t, r, d)
	r, d = cf.result(t, drvResult{name: "other", path: other, builder: "b1", nar: nar})
	if err := cf.pusher.Process(testctx.New(t, 60*time.Second), subject(r), d, r.MsgID()); err == nil {
		t.Fatal("the same hash part under another name was accepted")
	}
	b, err := store.ReadAll(testctx.New(t, 60*time.Second), cf.store, cachelayout.ProvenanceKey(real), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	prov, err := cachelayout.ParseProvenance(b)
	if err != nil || prov.StorePath != real || len(prov.Bundles) != 1 {
		t.Fatalf("sidecar of %s: %+v, %v", real, prov, err)
	}
	ni, _ := store.ReadAll(testctx.New(t, 60*time.Second), cf.store, cachelayout.NarinfoKey(real), 1<<20)
	if !strings.Contains(string(ni), "StorePath: "+real) {
		t.Fatalf("narinfo changed:\n%s", ni)
	}
}

// TestPendingVoteIsNotPublished (issue 11, finding 8): a vote still short
// of its quorum is not announced as published (no event, no log line, no
// counter); the agreeing second vote is, once.
func TestPendingVoteIsNotPublished(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 2, nil)
	p := storePath("pending")
	r, d := cf.result(t, drvResult{name: "pending", builder: "b0"})
	cf.process(t, r, d)
	time.Sleep(200 * time.Millisecond) // events are asynchronous
	if got := cf.eventPaths(queue.EventPublished); len(got) != 0 || cf.isVisible(t, p) {
		t.Fatalf("one vote of two: published events %v, visible %v", got, cf.isVisible(t, p))
	}
	r, d = cf.result(t, drvResult{name: "pending", builder: "b1"})
	cf.process(t, r, d)
	deadline := time.Now().Add(5 * time.Second)
	for len(cf.eventPaths(queue.EventPublished)) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := cf.eventPaths(queue.EventPublished); !slices.Equal(got, []string{p}) || !cf.isVisible(t, p) {
		t.Fatalf("after the quorum: published events %v", got)
	}
}

// TestQuarantinedVoteRejected: a quarantined builder's result is
// recorded for audit but counts for nothing, so it is rejected (reason
// quarantined, with a rejection event): whoever asked for that build
// (the farm) asks another builder instead of waiting for a vote that
// never counts.
func TestQuarantinedVoteRejected(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 3, nil)
	ctx := testctx.New(t, 60*time.Second)
	rec, err := json.Marshal(Reputation{Builder: "b2", Disagreements: 3, Quarantined: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := cf.conn.KVPut(ctx, queue.BucketBuilders, queue.BuilderKey("b2"), rec); err != nil {
		t.Fatal(err)
	}
	top := storePath("top")
	r, d := cf.result(t, drvResult{name: "top", builder: "b2"})
	err = cf.pusher.Process(ctx, subject(r), d, r.MsgID())
	if !errors.Is(err, ErrRejected) || !errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), ReasonQuarantined) {
		t.Fatalf("quarantined builder's result: %v, want rejected (%s)", err, ReasonQuarantined)
	}
	cf.waitEvent(t, queue.EventRejected, ReasonQuarantined)
	if cf.isVisible(t, top) {
		t.Fatal("published on a quarantined builder's vote")
	}
	// Two builders in good standing still publish it, the quarantined
	// one's signature aside.
	for _, b := range []string{"b0", "b1"} {
		r, d := cf.result(t, drvResult{name: "top", builder: b})
		cf.process(t, r, d)
	}
	if !cf.isVisible(t, top) {
		t.Fatal("two agreeing builders in good standing, not published")
	}
}

// TestVoteVoidedByLaterQuarantine: a builder quarantined after it voted
// (its vote counted as one of the farm's replicas) no longer counts.
// When the next vote on that path leaves the tally waiting, the voided
// vote is announced as rejected (reason quarantined, naming its
// builder), so the farm dispatches another replica instead of waiting
// for ever (seen in TestFarmAccept: a set stalled with one honest vote
// and one voided liar's vote).
func TestVoteVoidedByLaterQuarantine(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 3, nil)
	ctx := testctx.New(t, 60*time.Second)
	r, d := cf.result(t, drvResult{name: "top", builder: "b2", nar: narOf(t, "liar")})
	cf.process(t, r, d)
	rec, err := json.Marshal(Reputation{Builder: "b2", Disagreements: 3, Quarantined: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := cf.conn.KVPut(ctx, queue.BucketBuilders, queue.BuilderKey("b2"), rec); err != nil {
		t.Fatal(err)
	}
	time.Sleep(repCacheTTL + 100*time.Millisecond) // the pusher read b2's record when it voted
	r, d = cf.result(t, drvResult{name: "top", builder: "b0"})
	cf.process(t, r, d)
	deadline := time.Now().Add(5 * time.Second)
	for {
		cf.mu.Lock()
		found := slices.ContainsFunc(cf.events, func(m *nats.Msg) bool {
			var rej Rejection
			return strings.HasSuffix(m.Subject, "."+queue.EventRejected) && json.Unmarshal(m.Data, &rej) == nil &&
				rej.Builder == "b2" && rej.Reason == ReasonQuarantined && rej.DrvPath == storePath("top.drv")
		})
		cf.mu.Unlock()
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no rejection of b2's voided vote: the farm would wait for it for ever")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if cf.isVisible(t, storePath("top")) {
		t.Fatal("published on one counted vote")
	}
	// Only the quarantined builder's vote is voided: the farm fails the
	// replicas a rejection names, and b0's is the honest one it waits on.
	cf.mu.Lock()
	defer cf.mu.Unlock()
	for _, m := range cf.events {
		var rej Rejection
		if strings.HasSuffix(m.Subject, "."+queue.EventRejected) && json.Unmarshal(m.Data, &rej) == nil && rej.Builder != "b2" {
			t.Errorf("rejection of %s's vote (%s): only the quarantined b2's is void", rej.Builder, rej.Reason)
		}
	}
}
