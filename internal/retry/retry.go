// Package retry is Provenix's one retry loop: exponential backoff with
// jitter, a cap on each wait, on the number of attempts and on the time
// spent, and the caller's ctx, which ends the loop at once.
//
// What is worth retrying stays the caller's decision: its function marks
// an error that another attempt cannot fix with Stop. A Policy is a plain
// value; Delay alone serves loops that do not fit Do (a long-running
// worker that resets its count after a success, nats.go's reconnect
// delay).
package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Policy says how often and how long to try.
type Policy struct {
	// Initial is the wait after the first failed attempt; it doubles
	// after each further failure, up to Max (no cap when 0).
	Initial, Max time.Duration
	// Jitter, from 0 to 1, is the part of each wait drawn at random: a
	// wait d becomes uniform in [d-Jitter*d, d], so that clients that
	// failed together do not come back together, and Max stays a bound.
	Jitter float64
	// Attempts bounds the calls of Do's function (0: no bound).
	Attempts int
	// MaxElapsed bounds the time from the first call: Do does not wait
	// for an attempt that would start later (0: no bound).
	MaxElapsed time.Duration
	// OnRetry, when set, is called before each wait with the attempt
	// that failed (1-based), the wait and its error: for logging.
	OnRetry func(attempt int, delay time.Duration, err error)
}

// Delay is the wait after failed attempt n (1-based).
func (p Policy) Delay(n int) time.Duration {
	d := p.Initial
	for i := 1; i < n && d > 0 && d < time.Duration(1)<<61 && (p.Max <= 0 || d < p.Max); i++ {
		d *= 2
	}
	if p.Max > 0 {
		d = min(d, p.Max)
	}
	if j := min(max(p.Jitter, 0), 1); j > 0 && d > 0 {
		d -= rand.N(time.Duration(j*float64(d)) + 1)
	}
	return d
}

// Do calls f with the attempt number (1-based) until it returns nil, an
// error marked with Stop (returned without the mark), or the last error
// once p.Attempts calls were made or p.MaxElapsed would pass. When ctx
// ends first, the error matches context.Cause(ctx) and the last error
// (for errors.Is and As) and says both. f should derive its own
// deadlines from the ctx the caller passes it, so that an attempt cannot
// outlast ctx.
func Do(ctx context.Context, p Policy, f func(attempt int) error) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := f(attempt)
		if err == nil {
			return nil
		}
		var s *stopError
		stop := errors.As(err, &s)
		if top, ok := err.(*stopError); ok {
			err = top.err
		}
		if ctx.Err() != nil {
			return stopped(ctx, err)
		}
		if stop {
			return err
		}
		if p.Attempts > 0 && attempt >= p.Attempts {
			return err
		}
		d := p.Delay(attempt)
		if p.MaxElapsed > 0 && time.Since(start)+d > p.MaxElapsed {
			return err
		}
		if p.OnRetry != nil {
			p.OnRetry(attempt, d, err)
		}
		if Sleep(ctx, d) != nil {
			return stopped(ctx, err)
		}
	}
}

func stopped(ctx context.Context, err error) error {
	return fmt.Errorf("%w (last error: %w)", context.Cause(ctx), err)
}

// Stop marks err as one that retrying cannot fix: Do returns it at once,
// without the mark. Stop(nil) is nil.
func Stop(err error) error {
	if err == nil {
		return nil
	}
	return &stopError{err: err}
}

type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

// Sleep waits for d, or until ctx ends: then it returns ctx's cause.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
