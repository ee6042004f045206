package main

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/cache-push/wire"
)

// cacheFlags say where a binary cache lives: a directory (--dir) or an S3
// bucket (the --s3-* flags of `provenix up`). cache-push, cache serve and
// cache gc share them, so each reaches the same caches the same way.
type cacheFlags struct {
	dir string
	s3  s3Flags
}

func (f *cacheFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dir, "dir", "", "cache directory (default: the data directory's cache/)")
	f.s3.register(cmd)
}

// check validates the flags without touching any store, so a usage error
// comes before slower work; it returns the S3 options, nil for a directory.
func (f *cacheFlags) check() (*s3.Options, error) {
	opts, err := f.s3.options()
	if err != nil {
		return nil, err
	}
	if opts != nil && f.dir != "" {
		return nil, usageError("--dir and --s3-endpoint exclude each other")
	}
	return opts, nil
}

// open returns the cache store the flags select (wire.OpenStore). A
// directory is created unless mustExist, which is for commands that only
// read or delete; sweep removes abandoned S3 uploads until the store is
// closed (for a pusher).
func (f *cacheFlags) open(ctx context.Context, g *globals, mustExist, sweep bool) (*wire.Store, error) {
	opts, err := f.check()
	if err != nil {
		return nil, err
	}
	o := wire.StoreOptions{Dir: f.dir, S3: opts, MustExist: mustExist, Sweep: sweep}
	if opts != nil {
		opts.Logger = g.logger()
	} else if o.Dir == "" {
		o.Dir = g.paths().Cache()
	}
	st, err := wire.OpenStore(ctx, o)
	if errors.Is(err, wire.ErrOptions) {
		return nil, usageError("%v", err)
	}
	return st, err
}
