package farm

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	cachepush "codeberg.org/provenix/provenix/cache-push"
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
	subj, err := queue.FarmReportSubject(tenant)
	if err != nil {
		return nil, err
	}
	builders := map[string]*Tally{}
	err = conn.ReadFarmReports(ctx, since, func(subject string, data []byte) error {
		if subject != subj {
			return nil
		}
		rep, err := DecodeReport(data)
		if err != nil || rep.Tenant != tenant || rep.Time.Before(since) {
			return nil // not counted: the scheduler refused it as well
		}
		t := builders[rep.Builder]
		if t == nil {
			t = &Tally{Builder: rep.Builder, Owner: ownerOf(rep)}
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

func ownerOf(rep *Report) string {
	if rep.Owner != "" {
		return rep.Owner
	}
	return rep.Builder
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
