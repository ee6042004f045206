package cacheclient

import (
	"context"
	"fmt"
	"time"

	"codeberg.org/provenix/provenix/cachelayout"
)

// Polling bounds of WaitNarinfo: the first retry comes quickly (a pusher
// usually publishes within a second), later ones back off to a request
// every waitMaxDelay.
const (
	waitFirstDelay = 50 * time.Millisecond
	waitMaxDelay   = 2 * time.Second
)

// WaitNarinfo polls the cache until it serves the narinfo of storePath,
// which a pusher writes last, once the NAR and provenance are in place. It
// only looks for the file: Narinfo or Verify then check what it says. Any
// answer but 200 (404, 5xx, a refused connection while the cache starts)
// is asked again, until ctx ends; the error then wraps ctx's and says what
// the cache answered last. An invalid storePath fails at once
// (ErrInvalidPath).
func (c *Client) WaitNarinfo(ctx context.Context, storePath string) error {
	if err := checkPath(storePath); err != nil {
		return err
	}
	delay := waitFirstDelay
	for {
		resp, _, err := c.get(ctx, cachelayout.NarinfoKey(storePath))
		if err == nil {
			resp.Body.Close()
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for the narinfo of %s: %w (last answer: %v)", storePath, ctx.Err(), err)
		case <-t.C:
		}
		delay = min(2*delay, waitMaxDelay)
	}
}
