package cachepush

import (
	"context"
	"encoding/json"
)

// Verdicts hears of the final verdict on each path, to show it elsewhere
// (forgestatus sets the forge's commit status from it). Verdict is called
// on the pusher's hot path and must return at once: whatever it does
// with the verdict it does later, and it never fails the result. The
// pusher closes it when it closes, after its last verdict.
type Verdicts interface {
	Verdict(v Verdict)
	Close(ctx context.Context) error
}

// Verdict is a path published, disputed or left incomplete. Kind is
// queue.EventPublished, EventDisputed or EventIncomplete.
type Verdict struct {
	Kind      string
	Tenant    string
	StorePath string
	// Bundles are, for a dispute, the verified bundles of every vote on
	// the path; a published or incomplete path has its agreeing builders'
	// bundles in its provenance sidecar, already stored.
	Bundles []json.RawMessage
	// Why is the tally's reason (a dispute) or what is missing (an
	// incomplete path).
	Why string
}

// verdict hands v to the Verdicts, if any.
func (p *Pusher) verdict(v Verdict) {
	if p.cfg.Verdicts != nil {
		p.cfg.Verdicts.Verdict(v)
	}
}
