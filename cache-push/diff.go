package cachepush

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strings"
	"time"

	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/nardiff"
)

// ErrNothingToDiff: the path's votes name fewer than two distinct NARs.
var ErrNothingToDiff = errors.New("cachepush: fewer than two distinct NARs to compare")

// DiffNAR is one distinct NAR among a path's votes.
type DiffNAR struct {
	NarSHA256  string   `json:"narSha256"`
	NarSize    uint64   `json:"narSize"`
	Builders   []string `json:"builders"`
	StagingKey string   `json:"stagingKey"`
}

// PathDiff explains a disagreement on one store path: its distinct NARs
// and, for the first against each other one, what differs (`provenix
// diff --json`).
type PathDiff struct {
	StorePath   string       `json:"storePath"`
	Verdict     string       `json:"verdict"`
	Why         string       `json:"why"`
	NARs        []DiffNAR    `json:"nars"`
	Comparisons []Comparison `json:"comparisons"`
}

// Comparison is NARs[0] against NARs[Other].
type Comparison struct {
	Other int `json:"other"`
	// Report is nil when no NAR could be read; partial when Error says a
	// limit cut it short.
	Report *nardiff.Report `json:"report,omitempty"`
	// Error: a staged NAR that expired, a malformed NAR, a limit.
	Error string `json:"error,omitempty"`
}

// DistinctNARs groups votes by NAR hash, the NAR most builders voted for
// first (then by hash).
func DistinctNARs(votes []Vote) []DiffNAR {
	by := map[string]*DiffNAR{}
	for _, v := range votes {
		n := by[v.NarSHA256]
		if n == nil {
			n = &DiffNAR{NarSHA256: v.NarSHA256, NarSize: v.NarSize, StagingKey: v.StagingKey}
			by[v.NarSHA256] = n
		}
		n.Builders = append(n.Builders, v.Builder)
	}
	out := make([]DiffNAR, 0, len(by))
	for _, n := range by {
		slices.Sort(n.Builders)
		out = append(out, *n)
	}
	slices.SortFunc(out, func(a, b DiffNAR) int {
		if len(a.Builders) != len(b.Builders) {
			return len(b.Builders) - len(a.Builders)
		}
		return strings.Compare(a.NarSHA256, b.NarSHA256)
	})
	return out
}

// DiffPath reads the votes on storePath in tenant and compares the staged
// NARs they name: the first (most voted) against each other one, with
// o's limits. A staged NAR that cannot be read leaves an error for its
// report; ErrNothingToDiff when the votes agree on the NAR.
func DiffPath(ctx context.Context, kv KV, staging Staging, pol *policy.Policy, tenant, storePath string, o nardiff.Options) (*PathDiff, error) {
	t, votes, _, err := PathTally(ctx, kv, pol, tenant, storePath)
	if err != nil {
		return nil, err
	}
	pd := &PathDiff{StorePath: storePath, Verdict: t.Verdict, Why: t.Why, NARs: DistinctNARs(votes), Comparisons: []Comparison{}}
	if len(pd.NARs) < 2 {
		return pd, fmt.Errorf("%w: %s has %d votes on %d NARs (%s)", ErrNothingToDiff, storePath, len(votes), len(pd.NARs), t.Verdict)
	}
	if o.BuildTime.IsZero() && len(votes) > 0 {
		o.BuildTime = firstVote(votes)
	}
	for i := 1; i < len(pd.NARs); i++ {
		r, err := DiffNARs(ctx, staging, pd.NARs[0], pd.NARs[i], o)
		c := Comparison{Other: i, Report: r}
		if err != nil {
			c.Error = err.Error()
		}
		pd.Comparisons = append(pd.Comparisons, c)
	}
	return pd, nil
}

// DiffNARs compares two staged NARs, streaming both from staging.
func DiffNARs(ctx context.Context, staging Staging, a, b DiffNAR, o nardiff.Options) (*nardiff.Report, error) {
	ra, err := openVoted(ctx, staging, a)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	rb, err := openVoted(ctx, staging, b)
	if err != nil {
		return nil, err
	}
	defer rb.Close()
	o.LabelA = narLabel(a)
	o.LabelB = narLabel(b)
	r, err := nardiff.Diff(ctx, ra, rb, o)
	if err != nil {
		return r, fmt.Errorf("cachepush: diff %s: %w", strings.TrimPrefix(a.NarSHA256, "sha256:"), err)
	}
	// A report is evidence only of the NARs the votes name: a builder
	// that voted one hash and staged other bytes would otherwise make
	// up the differences (and the causes counted against the others).
	if err := errors.Join(ra.check(), rb.check()); err != nil {
		return nil, err
	}
	return r, nil
}

// ErrStagedMismatch: a staged NAR is not the one its vote names.
var ErrStagedMismatch = errors.New("cachepush: staged NAR does not match its vote")

// votedNAR reads a staged NAR while hashing it, to check it against the
// vote that named it once the diff is done.
type votedNAR struct {
	io.ReadCloser
	n   DiffNAR
	h   hash.Hash
	tee io.Reader
	got uint64
}

func openVoted(ctx context.Context, staging Staging, n DiffNAR) (*votedNAR, error) {
	rc, _, err := staging.OpenStaged(ctx, n.StagingKey)
	if err != nil {
		return nil, fmt.Errorf("cachepush: diff: staged NAR %s of %s: %w", n.StagingKey, strings.Join(n.Builders, ","), err)
	}
	v := &votedNAR{ReadCloser: rc, n: n, h: sha256.New()}
	// One byte past the voted size is enough to tell it is longer.
	v.tee = io.TeeReader(io.LimitReader(rc, int64(n.NarSize)+1), v.h)
	return v, nil
}

func (v *votedNAR) Read(p []byte) (int, error) {
	m, err := v.tee.Read(p)
	v.got += uint64(m)
	return m, err
}

// check reads what the diff left (it may stop early) and compares the
// bytes with the vote's NAR hash and size.
func (v *votedNAR) check() error {
	if _, err := io.Copy(io.Discard, v); err != nil {
		return fmt.Errorf("cachepush: diff: staged NAR %s: %w", v.n.StagingKey, err)
	}
	if got := hex.EncodeToString(v.h.Sum(nil)); v.got != v.n.NarSize || got != strings.TrimPrefix(v.n.NarSHA256, "sha256:") {
		return fmt.Errorf("%w: %s staged by %s is %d bytes with sha256 %s, not NAR %s of %d bytes", ErrStagedMismatch,
			v.n.StagingKey, strings.Join(v.n.Builders, ","), v.got, got, v.n.NarSHA256, v.n.NarSize)
	}
	return nil
}

func narLabel(n DiffNAR) string {
	h := n.NarSHA256
	if len(h) > 20 {
		h = h[:20] + "…"
	}
	return fmt.Sprintf("%s (%s)", h, strings.Join(n.Builders, ", "))
}

// Defaults of the dispute summary.
const (
	DefaultDiffTimeout = 20 * time.Second
	// maxSummaryDiffs is how many summaries run at once; a dispute past
	// it is published without one rather than wait.
	maxSummaryDiffs = 2
	summaryFiles    = 5
)

// disputeSummary compares the dispute's two most voted NARs under
// nardiff.SummaryLimits within timeout. It never fails: an error is kept
// in the summary and logged.
func (p *Pusher) disputeSummary(ctx context.Context, votes []Vote, storePath string, timeout time.Duration) *nardiff.Summary {
	nars := DistinctNARs(votes)
	if len(nars) < 2 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	o := nardiff.Options{Limits: nardiff.SummaryLimits, BuildTime: firstVote(votes)}
	r, err := DiffNARs(ctx, p.cfg.Staging, nars[0], nars[1], o)
	var s nardiff.Summary
	if r != nil {
		s = r.Summary(summaryFiles)
	}
	if err != nil {
		s.Error = err.Error()
		p.log.Info("dispute summary incomplete", "path", storePath, "err", err)
	}
	return &s
}

// Text renders the diff for people: the distinct NARs with their
// builders, then each report.
func (pd *PathDiff) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n  verdict: %s — %s\n", pd.StorePath, pd.Verdict, pd.Why)
	for i, n := range pd.NARs {
		fmt.Fprintf(&b, "  NAR %d: %s (%d bytes) from %s\n", i+1, n.NarSHA256, n.NarSize, strings.Join(n.Builders, ", "))
	}
	for _, c := range pd.Comparisons {
		fmt.Fprintf(&b, "\nNAR 1 against NAR %d:\n", c.Other+1)
		if c.Report != nil {
			b.WriteString(c.Report.Text())
		}
		if c.Error != "" {
			fmt.Fprintf(&b, "error: %s\n", c.Error)
		}
	}
	return b.String()
}

// BuilderCauses says, for each builder of the dispute, which recognised
// causes its build disagreed by (none when the summary recognised none,
// or there is no summary): what a farm's statistics count per builder.
func (d Dispute) BuilderCauses() map[string][]nardiff.CauseKind {
	out := map[string][]nardiff.CauseKind{}
	for _, bs := range d.NARs {
		for _, b := range bs {
			out[b] = nil
			if d.Summary != nil {
				out[b] = slices.Clone(d.Summary.Causes)
			}
		}
	}
	return out
}
