package usage

import (
	"cmp"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"codeberg.org/provenix/provenix/queue"
)

// By is what Aggregator groups records by.
type By string

// Groupings.
const (
	ByTenant  By = "tenant"
	ByRepo    By = "repo"
	ByBuilder By = "builder"
	ByReader  By = "reader"
)

// Bys are the groupings, in the order the command lists them.
var Bys = []By{ByTenant, ByRepo, ByBuilder, ByReader}

// ParseBy checks a grouping's name.
func ParseBy(s string) (By, error) {
	if b := By(s); slices.Contains(Bys, b) {
		return b, nil
	}
	return "", fmt.Errorf("usage: --by %q: want one of %v", s, Bys)
}

// none is the key of records without the grouped field (a serve record
// by builder, a farm build by repository).
const none = "-"

// key is r's group under by: within its tenant, so that two tenants'
// repositories (or readers) of the same name are never summed together.
func (b By) key(r *Record) (tenant, key string) {
	switch b {
	case ByTenant:
		return r.Tenant, r.Tenant
	case ByRepo:
		if r.Repository == "" {
			return r.Tenant, none
		}
		if host := forgeHost(r.Forge); host != "" {
			return r.Tenant, host + "/" + r.Repository
		}
		return r.Tenant, r.Repository
	case ByBuilder:
		return r.Tenant, cmp.Or(r.Builder, none)
	case ByReader:
		return r.Tenant, cmp.Or(r.Reader, none)
	}
	return r.Tenant, none
}

// forgeHost is a forge URL without its scheme.
func forgeHost(u string) string {
	if _, rest, ok := strings.Cut(u, "://"); ok {
		return strings.TrimRight(rest, "/")
	}
	return strings.TrimRight(u, "/")
}

// Row is one group's totals.
type Row struct {
	Tenant string `json:"tenant"`
	Key    string `json:"key"`
	// Jobs, Builds and Serves count the records of each kind (farm and
	// volunteer builds both count as Builds).
	Jobs   int `json:"jobs"`
	Builds int `json:"builds"`
	Serves int `json:"serves"`
	// CPUSeconds and WallSeconds are summed over the group's jobs and
	// builds (serve records carry none).
	CPUSeconds  float64 `json:"cpuSeconds"`
	WallSeconds float64 `json:"wallSeconds"`
	// PeakMemory is the largest of the group's peaks, in bytes.
	PeakMemory  int64 `json:"peakMemory"`
	BytesBuilt  int64 `json:"bytesBuilt"`
	BytesStaged int64 `json:"bytesStaged"`
	BytesServed int64 `json:"bytesServed"`
	Requests    int64 `json:"requests"`
}

// Report is the totals of every group over a window.
type Report struct {
	By    By        `json:"by"`
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
	Rows  []Row     `json:"rows"`
	// Refused counts records that were not counted: malformed, or not
	// from who they claim to be from (see Decode).
	Refused int `json:"refused,omitempty"`
}

// Aggregator sums records into groups. Its memory grows with the number
// of groups, not of records.
type Aggregator struct {
	by   By
	rows map[[2]string]*Row
}

// NewAggregator groups by by.
func NewAggregator(by By) *Aggregator {
	return &Aggregator{by: by, rows: map[[2]string]*Row{}}
}

// Add counts r in its group.
func (a *Aggregator) Add(r *Record) {
	tenant, key := a.by.key(r)
	row := a.rows[[2]string{tenant, key}]
	if row == nil {
		row = &Row{Tenant: tenant, Key: key}
		a.rows[[2]string{tenant, key}] = row
	}
	switch r.Kind {
	case KindJob:
		row.Jobs++
	case KindFarm, KindVolunteer:
		row.Builds++
	case KindServe:
		row.Serves++
		row.BytesServed += r.BytesServed
		row.Requests += r.Requests
		return // its window is not work done
	}
	row.CPUSeconds += r.CPU().Seconds()
	row.WallSeconds += r.Wall().Seconds()
	row.PeakMemory = max(row.PeakMemory, r.PeakMemory)
	row.BytesBuilt += r.BytesBuilt
	row.BytesStaged += r.BytesStaged
}

// Rows are the groups, by tenant and key.
func (a *Aggregator) Rows() []Row {
	out := make([]Row, 0, len(a.rows))
	for _, r := range a.rows {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(x, y Row) int { return cmp.Or(cmp.Compare(x.Tenant, y.Tenant), cmp.Compare(x.Key, y.Key)) })
	return out
}

// Summarize reads the records on filter (see Filter) stored since since
// and sums them by by.
func Summarize(ctx context.Context, conn Conn, filter string, since time.Time, by By) (*Report, error) {
	if _, err := ParseBy(string(by)); err != nil {
		return nil, err
	}
	a := NewAggregator(by)
	until := time.Now()
	refused, err := Read(ctx, conn, filter, since, func(r *Record) error {
		a.Add(r)
		return nil
	})
	if err != nil {
		if errors.Is(err, queue.ErrPermissionDenied) && filter == queue.UsageFilter("") {
			// A tenant's pusher or runner credentials may read only their
			// own tenant's (or builder's) records, never the whole stream.
			return nil, fmt.Errorf("%w: these credentials may not read every tenant's records: name yours with --tenant (and a runner's builder with --builder-id)", err)
		}
		return nil, err
	}
	return &Report{By: by, Since: since.UTC(), Until: until.UTC(), Rows: a.Rows(), Refused: refused}, nil
}

// columns are the table's and the CSV's columns after tenant and key.
var columns = []string{"jobs", "builds", "serves", "cpu_seconds", "wall_seconds", "peak_memory_bytes", "bytes_built", "bytes_staged", "bytes_served", "requests"}

func (r *Row) values() []string {
	return []string{
		strconv.Itoa(r.Jobs), strconv.Itoa(r.Builds), strconv.Itoa(r.Serves),
		strconv.FormatFloat(r.CPUSeconds, 'f', 3, 64), strconv.FormatFloat(r.WallSeconds, 'f', 3, 64),
		strconv.FormatInt(r.PeakMemory, 10), strconv.FormatInt(r.BytesBuilt, 10), strconv.FormatInt(r.BytesStaged, 10),
		strconv.FormatInt(r.BytesServed, 10), strconv.FormatInt(r.Requests, 10),
	}
}

// WriteCSV writes the report as CSV: a header, then one line per row,
// exact figures (bytes, seconds to the millisecond).
func (rep *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(append([]string{"tenant", string(rep.By)}, columns...)); err != nil {
		return err
	}
	for i := range rep.Rows {
		r := &rep.Rows[i]
		if err := cw.Write(append([]string{r.Tenant, r.Key}, r.values()...)); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// WriteTable writes the report as an aligned table for people: CPU and
// wall time in hours too, bytes in binary units.
func (rep *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "usage by %s from %s to %s\n\n", rep.By, rep.Since.Format(time.DateTime), rep.Until.Format(time.DateTime))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "tenant\t%s\tjobs\tbuilds\tCPU s\tCPU h\twall h\tpeak mem\tbuilt\tstaged\tserved\trequests\t\n", rep.By)
	if len(rep.Rows) == 0 {
		fmt.Fprintln(tw, "(no records)\t")
	}
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%d\t\n", r.Tenant, r.Key, r.Jobs, r.Builds,
			r.CPUSeconds, r.CPUSeconds/3600, r.WallSeconds/3600, ibytes(r.PeakMemory), ibytes(r.BytesBuilt),
			ibytes(r.BytesStaged), ibytes(r.BytesServed), r.Requests)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rep.Refused > 0 {
		fmt.Fprintf(w, "\n%d records were not counted: malformed, or not from who they claim to be from\n", rep.Refused)
	}
	return nil
}

// ibytes formats n bytes in binary units, as the other commands do.
func ibytes(n int64) string { return humanize.IBytes(uint64(n)) }

// ParseSince reads a window's start: a duration back from now (Go's
// units, plus d for days and w for weeks: 30d, 2w, 36h, 1d12h), or a
// date (2006-01-02) or time (RFC 3339).
func ParseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	d, err := ParseDuration(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("usage: since %q: want a duration (30d, 2w, 36h) or a date (2006-01-02): %w", s, err)
	}
	if d < 0 {
		return time.Time{}, fmt.Errorf("usage: since %q: negative", s)
	}
	return now.Add(-d), nil
}

// ParseDuration is time.ParseDuration with days (d, 24 h) and weeks (w)
// as leading units: "30d", "2w3d", "1d12h".
func ParseDuration(s string) (time.Duration, error) {
	var total time.Duration
	rest := s
	for _, u := range []struct {
		suffix byte
		d      time.Duration
	}{{'w', 7 * 24 * time.Hour}, {'d', 24 * time.Hour}} {
		i := strings.IndexByte(rest, u.suffix)
		if i < 0 {
			continue
		}
		n, err := strconv.ParseFloat(rest[:i], 64)
		if err != nil || n < 0 || strings.ContainsAny(rest[:i], "eE") {
			return 0, fmt.Errorf("bad number of %c in %q", u.suffix, s)
		}
		total += time.Duration(n * float64(u.d))
		rest = rest[i+1:]
	}
	if rest == "" {
		if rest == s {
			return 0, fmt.Errorf("empty duration")
		}
		return total, nil
	}
	d, err := time.ParseDuration(rest)
	if err != nil {
		return 0, err
	}
	return total + d, nil
}
