package farm

import (
	"cmp"
	"context"
	"slices"
	"time"

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
// stream keeps them 4 × the streams' MaxAge).
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
