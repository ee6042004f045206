package rpc

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"codeberg.org/provenix/provenix/internal/retry"
)

// call sends msg with fn until it succeeds, fails for good, the attempts
// run out or ctx ends. hdr is added to every attempt.
func call[Req, Res any](
	ctx context.Context, c *Client, method string, msg *Req, hdr http.Header, r Retry,
	fn func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error),
) (*Res, error) {
	p := r.policy()
	p.OnRetry = func(attempt int, d time.Duration, err error) {
		c.log.Debug("forge call failed, retrying", attrMethod, method, attrAttempt, attempt, attrDelay, d, attrErr, err)
	}
	var res *connect.Response[Res]
	attempts := 0
	err := retry.Do(ctx, p, func(attempt int) error {
		attempts = attempt
		req := connect.NewRequest(msg)
		for k, v := range hdr {
			req.Header()[k] = v
		}
		actx, cancel := context.WithTimeout(ctx, r.AttemptTimeout)
		defer cancel()
		var err error
		res, err = fn(actx, req)
		if err != nil && !transient(err) {
			return retry.Stop(err)
		}
		return err
	})
	switch {
	case err == nil:
		return res.Msg, nil
	case ctx.Err() != nil:
		// The caller's deadline or cancellation, not the forge's answer:
		// keep ctx's error matchable.
		return nil, fmt.Errorf("forge %s: %w", method, err)
	default:
		return nil, &Error{Method: method, Kind: kind(method, err), Attempts: attempts, Err: err}
	}
}

// policy is r's backoff: Initial doubled per attempt up to Max, each
// wait drawn from [d/2, d].
func (r Retry) policy() retry.Policy {
	return retry.Policy{Initial: r.Initial, Max: r.Max, Jitter: 0.5, Attempts: r.Attempts}
}
