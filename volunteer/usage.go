package volunteer

import (
	"context"
	"time"

	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/usage"
)

// usageTimeout bounds publishing one build's usage record.
const usageTimeout = 10 * time.Second

// recordUsage records a build that ran (Usage): its CPU time (rusage of
// the Nix process: with a local store its builders are its children,
// with a daemon they are the daemon's), wall time from start through
// publishing, and the NAR bytes pubs attested and staged. A record that
// cannot be published is logged; the build's outcome does not depend on
// it.
func (v *Volunteer) recordUsage(ctx context.Context, kind usage.Kind, req *queue.RebuildRequest, start time.Time, cpu time.Duration, pubs []builder.Published) {
	if v.Usage == nil {
		return
	}
	r := &usage.Record{Kind: kind, Tenant: v.Builder.Tenant, Builder: v.Builder.BuilderID, DrvPath: req.DrvPath,
		Start: start.UTC(), End: time.Now().UTC(), CPUMicros: cpu.Microseconds(), CPUFrom: usage.FromRusage}
	r.BytesBuilt, r.BytesStaged = usage.PublishedBytes(pubs)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), usageTimeout)
	defer cancel()
	if err := v.Usage.Record(ctx, r); err != nil {
		v.log().Warn("recording the build's usage", logKeyDrv, req.DrvPath, logKeyErr, err)
	}
}
