package farm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"codeberg.org/provenix/provenix/cacheclient"
)

// Cache says whether a store path is visible: its narinfo is in the
// Provenix cache, or in an upstream the policy declares. A derivation is
// dispatched once the outputs it needs are visible, because that is
// where its builder will substitute them from.
type Cache interface {
	Has(ctx context.Context, storePath string) (bool, error)
}

// Caches is a Cache over binary caches read with cacheclient: own first
// (its errors, other than not found, are errors), then the upstreams (an
// upstream that errs only does not have the path, as the pusher's
// closure rule treats it).
type Caches struct {
	Own       *cacheclient.Client
	Upstreams []*cacheclient.Client
}

var _ Cache = (*Caches)(nil)

// Has implements Cache.
func (c *Caches) Has(ctx context.Context, storePath string) (bool, error) {
	if c.Own != nil {
		ni, err := c.Own.Narinfo(ctx, storePath)
		switch {
		case err == nil && ni != nil:
			return true, nil
		case err != nil && !errors.Is(err, cacheclient.ErrNotFound):
			return false, fmt.Errorf("farm: cache: %w", err)
		}
	}
	for _, u := range c.Upstreams {
		if ni, err := u.Narinfo(ctx, storePath); err == nil && ni != nil {
			return true, nil
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
	}
	return false, nil
}

// CacheAt is the Cache of one binary cache at url whose narinfos are
// signed by one of publicKeys (Nix's "name:base64" form).
func CacheAt(url string, publicKeys []string) (*Caches, error) {
	if len(publicKeys) == 0 {
		return nil, errors.New("farm: cache: no public key: a narinfo nobody signed would count as visible")
	}
	c, err := cacheclient.New(cacheclient.Options{URL: url, PublicKeys: publicKeys, RequestTimeout: 30 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("farm: cache: %w", err)
	}
	return &Caches{Own: c}, nil
}

// lookup asks cache about every path, a few at a time, and returns the
// answers by path.
func lookup(ctx context.Context, cache Cache, paths []string) (map[string]bool, error) {
	visible := make(map[string]bool, len(paths))
	var mu sync.Mutex
	err := parallel(ctx, paths, func(ctx context.Context, p string) error {
		ok, err := cache.Has(ctx, p)
		if err != nil {
			return err
		}
		mu.Lock()
		visible[p] = ok
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return visible, nil
}
