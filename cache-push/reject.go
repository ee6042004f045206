package cachepush

import (
	"context"
	"errors"
	"fmt"
	"time"

	"codeberg.org/provenix/provenix/queue"
)

// Reasons a result is rejected, as recorded in rejection events and
// carried by RejectedError. ca.go, outpath.go, quorum.go and flood.go
// define the reasons of their own checks beside them.
const (
	ReasonMalformed    = "malformed"
	ReasonTooLarge     = "too-large"
	ReasonPolicy       = "policy"
	ReasonVerification = "verification"
	ReasonInconsistent = "inconsistent"
	ReasonNAR          = "nar-mismatch"
	ReasonStaging      = "staging-missing"
	ReasonConflict     = "conflict"
)

// ErrRejected matches every permanent refusal of a result: each is a
// *RejectedError.
var ErrRejected = errors.New("result rejected")

// RejectedError is a permanent refusal of a result: retrying cannot
// change it. Reason is one of the Reason constants, as in the Rejection
// event; Err says what was wrong. It matches ErrRejected with errors.Is,
// and Err's own sentinels (ErrOutputPath, ingest.ErrMismatch, ...)
// through Unwrap. Process returns it wrapped in queue.Permanent.
type RejectedError struct {
	Reason string
	Err    error
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("%s (%s): %v", ErrRejected, e.Reason, e.Err)
}

func (e *RejectedError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrRejected) hold for every RejectedError.
func (e *RejectedError) Is(target error) bool { return target == ErrRejected }

// rejected is a *RejectedError for reason, so call sites stay short.
func rejected(reason string, err error) *RejectedError {
	return &RejectedError{Reason: reason, Err: err}
}

// Rejection is the event published on events.<tenant>.rejected.
type Rejection struct {
	Time    time.Time `json:"time"`
	MsgID   string    `json:"msgId,omitempty"`
	Tenant  string    `json:"tenant"`
	Builder string    `json:"builder,omitempty"`
	DrvPath string    `json:"drvPath,omitempty"`
	System  string    `json:"system,omitempty"`
	Reason  string    `json:"reason"`
	Error   string    `json:"error"`
}

// reject records a permanent refusal (metric, log, rejection event with
// re's reason) and returns it, marked permanent.
func (p *Pusher) reject(ctx context.Context, rej Rejection, re *RejectedError) error {
	rej.Time = time.Now().UTC()
	rej.Reason = re.Reason
	rej.Error = re.Err.Error()
	p.cfg.Metrics.Rejected(rej.Reason)
	p.log.Warn("rejected result", "reason", rej.Reason, "builder", rej.Builder, "drv", rej.DrvPath, "err", re.Err)
	p.event(ctx, rej.Tenant, queue.EventRejected, rej)
	return queue.Permanent(re)
}
