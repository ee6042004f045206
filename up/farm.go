package up

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/farm/page"
	"codeberg.org/provenix/provenix/queue"
)

// FarmPath is where the cache server shows the farm's page.
const FarmPath = "/farm"

// openFarm makes the farm's stream and bucket and starts its scheduler,
// which looks outputs up in this stack's store and in the policy's
// upstreams: 'provenix submit' to this stack is then built by whoever
// volunteers.
func (s *Stack) openFarm(ctx context.Context, pol *policy.Policy) error {
	ups, err := cachepush.UpstreamsFor(pol, nil)
	if err != nil {
		return fmt.Errorf("farm: %w", err)
	}
	if err := s.conn.EnsureFarm(ctx, queue.StreamOptions{}); err != nil {
		return fmt.Errorf("farm: %w", err)
	}
	sched, err := farm.NewScheduler(farm.SchedulerConfig{Conn: s.conn, Cache: &storeCache{store: s.store.Store, upstreams: ups}, Logger: s.log})
	if err != nil {
		return err
	}
	if err := sched.Open(ctx); err != nil {
		return err
	}
	s.farm = sched
	return nil
}

// withFarmPage serves the farm's page at FarmPath next to the cache.
func (s *Stack) withFarmPage(cache http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(FarmPath, page.Handler(page.FromConn(s.conn, s.cfg.Tenant), page.Options{Logger: s.log}))
	mux.Handle("/", cache)
	return mux
}

// storeCache is the farm's view of this stack's cache: a path is visible
// when its narinfo is in the store or in an upstream, as the pusher's
// closure rule counts it.
type storeCache struct {
	store     store.Store
	upstreams []cachepush.Upstream
}

func (c *storeCache) Has(ctx context.Context, storePath string) (bool, error) {
	_, err := c.store.Stat(ctx, cachelayout.NarinfoKey(storePath))
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	for _, u := range c.upstreams {
		if ni, err := u.Narinfo(ctx, storePath); err == nil && ni != nil && ni.StorePath == storePath {
			return true, nil
		}
	}
	return false, nil
}
