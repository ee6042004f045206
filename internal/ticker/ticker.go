// Package ticker runs a function at intervals, in a goroutine of its
// own, until it is stopped: a delivery's heartbeat, a build's check that
// it is still needed.
package ticker

import (
	"context"
	"time"
)

// Every calls f every interval, first after one interval, until f
// returns false, ctx ends or stop is called. stop waits for the
// goroutine to end, so f is not running when it returns; calling it
// again does nothing.
func Every(ctx context.Context, interval time.Duration, f func(ctx context.Context) (again bool)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !f(ctx) {
					return
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
