package gc

import (
	"context"
	"fmt"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// Uploads is a store whose interrupted uploads take space outside its
// objects (an S3 bucket's temporary objects and incomplete multipart
// uploads: s3.Store) and can be deleted once older than age.
type Uploads interface {
	RemoveStale(ctx context.Context, age time.Duration) error
}

// Collect is Run and then, for a store with interrupted uploads (Uploads),
// the deletion of those older than opts.Grace (DefaultGrace when zero):
// the grace that keeps a push in progress safe from Run keeps it safe here
// too. A dry run, or a Run that failed, leaves the uploads alone. It is
// what `provenix cache gc` does.
func Collect(ctx context.Context, st store.Store, opts Options) (*Report, error) {
	rep, err := Run(ctx, st, opts)
	u, ok := st.(Uploads)
	if !ok || opts.DryRun || err != nil {
		return rep, err
	}
	grace := opts.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	if err := u.RemoveStale(ctx, grace); err != nil {
		return rep, fmt.Errorf("gc: interrupted uploads: %w", err)
	}
	return rep, nil
}
