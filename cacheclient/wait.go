package cacheclient

import (
	"context"
	"fmt"
	"time"

	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/retry"
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
	err := retry.Do(ctx, retry.Policy{Initial: waitFirstDelay, Max: waitMaxDelay}, func(int) error {
		resp, _, err := c.get(ctx, cachelayout.NarinfoKey(storePath))
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait for the narinfo of %s: %w", storePath, err)
	}
	return nil
}
