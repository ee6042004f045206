package farm

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/queue"
)

// Tally is the work of one builder, or of one owner's builders, over a
// window, as the workers reported it.
type Tally struct {
	Builder string `json:"builder,omitempty"`
	Owner   string `json:"owner"`
	// Builds counts builds that ran to the end, Failures those that
	// failed.
	Builds      int     `json:"builds"`
	Failures    int     `json:"failures"`
	CPUSeconds  float64 `json:"cpuSeconds"`
	WallSeconds float64 `json:"wallSeconds"`
	// Agreements and Disagreements are the builder's votes that agreed
	// with, or differed from, the others' on the same outputs, and
	// Quarantined whether the pushers quarantined it (their reputation
	// records, all time).
	Agreements    int  `json:"agreements"`
	Disagreements int  `json:"disagreements"`
	Quarantined   bool `json:"quarantined,omitempty"`
	// Disputes counts the store paths whose builders disagreed, this one
	// among them, in the window (the pushers' disputed events, which the
	// events stream keeps StreamOptions.MaxAge), and Causes those
	// disputes by the cause their summary recognised (nardiff's kinds,
	// or CauseOther when it named none): a dispute with two causes counts
	// under both.
	Disputes int                       `json:"disputes,omitempty"`
	Causes   map[nardiff.CauseKind]int `json:"causes,omitempty"`
}

// CauseOther counts the disputes whose summary recognised no cause (or
// that had no summary: the answers differed in their references only,
// or the pusher could not compare them).
const CauseOther nardiff.CauseKind = "other"

// CauseCount is one cause of a builder's disputes and how many.
type CauseCount struct {
	Cause nardiff.CauseKind
	N     int
}

// CauseCounts are t's causes, most frequent first (then by name).
func (t Tally) CauseCounts() []CauseCount {
	out := make([]CauseCount, 0, len(t.Causes))
	for k, n := range t.Causes {
		out = append(out, CauseCount{k, n})
	}
	slices.SortFunc(out, func(a, b CauseCount) int { return cmp.Or(cmp.Compare(b.N, a.N), cmp.Compare(a.Cause, b.Cause)) })
	return out
}

// DisputeText says t's disputes in a few words, for a table: "3
// disputes: timestamp ×2, build-path ×1", or "" when it had none.
func (t Tally) DisputeText() string {
	if t.Disputes == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d dispute", t.Disputes)
	if t.Disputes > 1 {
		b.WriteString("s")
	}
	sep := ": "
	for _, c := range t.CauseCounts() {
		fmt.Fprintf(&b, "%s%s ×%d", sep, c.Cause, c.N)
		sep = ", "
	}
	return b.String()
}

// AgreementRate is the share of votes that agreed, or -1 when there was
// nothing to agree on.
func (t Tally) AgreementRate() float64 {
	if n := t.Agreements + t.Disagreements; n > 0 {
		return float64(t.Agreements) / float64(n)
	}
	return -1
}

// Stats is the farm's work over a window: per builder and per owner,
// most builds first. It is what a leaderboard shows.
type Stats struct {
	Tenant   string    `json:"tenant"`
	Since    time.Time `json:"since"`
	Builders []Tally   `json:"builders"`
	Owners   []Tally   `json:"owners"`
}

// ReadStats adds up tenant's reports stored since since (the reports
// stream keeps them 4 × the streams' MaxAge), with each builder's
// standing from the pushers' reputation records.
func ReadStats(ctx context.Context, conn *queue.Conn, tenant string, since time.Time) (*Stats, error) {
	if err := queue.ValidToken(tenant); err != nil {
		return nil, fmt.Errorf("farm: stats: tenant: %w", err)
	}
	kv, err := bucket(ctx, conn)
	if err != nil {
		return nil, err
	}
	builders := map[string]*Tally{}
	records := &drvRecords{conn: conn, kv: kv, read: map[string]*drvRecord{}, states: map[string]*State{}}
	err = conn.ReadFarmReports(ctx, since, func(subject string, data []byte) error {
		// A report naming another builder than its subject's (one
		// runner speaking for another) is not counted, nor one of
		// another tenant.
		rep, err := DecodeReport(subject, data)
		if err != nil || rep.Tenant != tenant || rep.Time.Before(since) {
			return nil // not counted: the scheduler refused it as well
		}
		// Only a claimant's report counts, under the owner it claimed
		// with: anyone allowed to publish reports could otherwise credit
		// itself (or another) with builds and CPU hours it never ran.
		rec, err := records.of(ctx, rep)
		if err != nil {
			return err
		}
		owner, ok := rec.claimant(rep)
		if !ok {
			return nil
		}
		t := builders[rep.Builder]
		if t == nil {
			t = &Tally{Builder: rep.Builder, Owner: cmp.Or(owner, rep.Builder)}
			builders[rep.Builder] = t
		}
		t.add(rep)
		return nil
	})
	if err != nil {
		return nil, err
	}
	reps, err := conn.KVList(ctx, queue.BucketBuilders, "")
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, err
	}
	for _, b := range reps {
		var r cachepush.Reputation
		if json.Unmarshal(b, &r) != nil {
			continue
		}
		if t := builders[r.Builder]; t != nil {
			t.Agreements, t.Disagreements, t.Quarantined = r.Agreements, r.Disagreements, r.Quarantined
		}
	}
	if err := addDisputes(ctx, conn, tenant, since, builders); err != nil {
		return nil, err
	}
	st := &Stats{Tenant: tenant, Since: since}
	owners := map[string]*Tally{}
	for _, t := range builders {
		st.Builders = append(st.Builders, *t)
		o := owners[t.Owner]
		if o == nil {
			o = &Tally{Owner: t.Owner}
			owners[t.Owner] = o
		}
		o.Builds += t.Builds
		o.Failures += t.Failures
		o.CPUSeconds += t.CPUSeconds
		o.WallSeconds += t.WallSeconds
		o.Agreements += t.Agreements
		o.Disagreements += t.Disagreements
		o.Quarantined = o.Quarantined || t.Quarantined
		o.Disputes += t.Disputes
		for k, n := range t.Causes {
			if o.Causes == nil {
				o.Causes = map[nardiff.CauseKind]int{}
			}
			o.Causes[k] += n
		}
	}
	for _, o := range owners {
		st.Owners = append(st.Owners, *o)
	}
	byBuilds := func(a, b Tally) int {
		return cmp.Or(cmp.Compare(b.Builds, a.Builds), cmp.Compare(a.Owner, b.Owner), cmp.Compare(a.Builder, b.Builder))
	}
	slices.SortFunc(st.Builders, byBuilds)
	slices.SortFunc(st.Owners, byBuilds)
	return st, nil
}

// addDisputes counts, for each builder of builders, the disputes it was
// in since since and their causes, from tenant's disputed events. A
// builder counts a store path once, with the causes of its latest event:
// each pusher group publishes its own event, and a dispute is published
// again when another builder votes.
func addDisputes(ctx context.Context, conn *queue.Conn, tenant string, since time.Time, builders map[string]*Tally) error {
	type key struct{ builder, storePath string }
	latest := map[key][]nardiff.CauseKind{}
	err := conn.ReadEvents(ctx, tenant, queue.EventDisputed, since, func(data []byte) error {
		var d cachepush.Dispute
		if json.Unmarshal(data, &d) != nil || d.Tenant != tenant || d.Time.Before(since) {
			return nil // not a dispute of this window: not counted
		}
		for b, causes := range d.BuilderCauses() {
			if builders[b] != nil {
				latest[key{b, d.StorePath}] = causes
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for k, causes := range latest {
		t := builders[k.builder]
		t.Disputes++
		if t.Causes == nil {
			t.Causes = map[nardiff.CauseKind]int{}
		}
		if len(causes) == 0 {
			causes = []nardiff.CauseKind{CauseOther}
		}
		for _, c := range slices.Compact(slices.Sorted(slices.Values(causes))) {
			t.Causes[c]++
		}
	}
	return nil
}

func (t *Tally) add(rep *Report) {
	if rep.Outcome == Built {
		t.Builds++
	} else {
		t.Failures++
	}
	t.CPUSeconds += rep.CPUSeconds
	t.WallSeconds += float64(rep.WallMillis) / 1000
}

// drvRecord is what the farm recorded of one derivation of a set and one
// builder: the builder's claim on it now, and who failed it before.
type drvRecord struct {
	claim *Claim
	state State
}

// claimant reports whether rep's builder held the replica and attempt
// it reports on, and the owner it claimed with: its claim says so, or
// the scheduler recorded its failure (the claim has moved on since).
func (r *drvRecord) claimant(rep *Report) (owner string, ok bool) {
	if r.claim.holds(rep.Builder, rep.Replica, rep.Attempt) {
		return r.claim.Owner, true
	}
	for _, f := range r.state.Failures {
		if f.Replica == rep.Replica && f.Attempt == rep.Attempt && f.Builder == rep.Builder {
			return f.Owner, true
		}
	}
	return "", false
}

// drvRecords reads each derivation's state, and each builder's claim on
// it, once.
type drvRecords struct {
	conn   *queue.Conn
	kv     jetstream.KeyValue
	read   map[string]*drvRecord // by claim key
	states map[string]*State     // by state key
}

func (d *drvRecords) of(ctx context.Context, rep *Report) (*drvRecord, error) {
	key := ClaimKey(rep.Set, rep.DrvPath, rep.Builder)
	if r := d.read[key]; r != nil {
		return r, nil
	}
	c, err := builderClaim(ctx, d.conn, rep.Set, rep.DrvPath, rep.Builder)
	if err != nil {
		return nil, err
	}
	sk := stateKey(rep.Set, rep.DrvPath)
	st := d.states[sk]
	if st == nil {
		st = &State{}
		if _, _, err := getJSON(ctx, d.kv, sk, st); err != nil {
			return nil, err
		}
		d.states[sk] = st
	}
	r := &drvRecord{claim: c, state: *st}
	d.read[key] = r
	return r, nil
}
