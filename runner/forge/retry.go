package forge

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"connectrpc.com/connect"
)

// call sends msg with fn until it succeeds, fails for good, the attempts
// run out or ctx ends. hdr is added to every attempt.
func call[Req, Res any](
	ctx context.Context, c *Client, method string, msg *Req, hdr http.Header, r Retry,
	fn func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error),
) (*Res, error) {
	var err error
	for attempt := 1; ; attempt++ {
		req := connect.NewRequest(msg)
		for k, v := range hdr {
			req.Header()[k] = v
		}
		actx, cancel := context.WithTimeout(ctx, r.AttemptTimeout)
		var res *connect.Response[Res]
		res, err = fn(actx, req)
		cancel()
		if err == nil {
			return res.Msg, nil
		}
		if ctx.Err() != nil {
			// The caller's deadline or cancellation, not the forge's
			// answer: keep ctx's error matchable.
			return nil, fmt.Errorf("forge %s: %w (last error: %v)", method, context.Cause(ctx), err)
		}
		if !transient(err) || attempt >= r.Attempts {
			return nil, &Error{Method: method, Kind: kind(method, err), Attempts: attempt, Err: err}
		}
		d := backoff(r, attempt)
		c.log.Debug("forge call failed, retrying", attrMethod, method, attrAttempt, attempt, attrDelay, d, attrErr, err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("forge %s: %w (last error: %v)", method, context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// backoff is the delay after the given failed attempt (1-based): Initial
// doubled per attempt up to Max, drawn from [d/2, d].
func backoff(r Retry, attempt int) time.Duration {
	d := r.Initial
	for i := 1; i < attempt && d < r.Max; i++ {
		d *= 2
	}
	d = min(d, r.Max)
	half := d / 2
	return half + rand.N(d-half+1)
}
