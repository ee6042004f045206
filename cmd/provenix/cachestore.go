package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cache-push/store/s3"
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

// openedCache is a cache store and how to name it to a human.
type openedCache struct {
	store.Store
	where string
	// s3 is the store when the cache is in S3 (for RemoveStale), else nil.
	s3 *s3.Store
}

// open returns the cache store the flags select. An S3 bucket is checked
// (it must exist and the credentials reach it). A directory is created
// unless mustExist, which is for commands that only read or delete: a
// mistyped --dir then fails instead of serving or collecting an empty
// cache.
func (f *cacheFlags) open(ctx context.Context, g *globals, mustExist bool) (*openedCache, error) {
	opts, err := f.check()
	if err != nil {
		return nil, err
	}
	if opts != nil {
		st, err := s3.New(*opts)
		if err != nil {
			return nil, usageError("%v", err)
		}
		if err := st.Check(ctx); err != nil {
			return nil, fmt.Errorf("s3 cache at %s: %w", opts.Endpoint, err)
		}
		return &openedCache{Store: st, where: "s3://" + opts.Bucket + "/" + opts.Prefix, s3: st}, nil
	}
	dir := f.dir
	if dir == "" {
		dir = g.paths().Cache()
	}
	if mustExist {
		if _, err := os.Stat(dir); err != nil {
			return nil, usageError("--dir: %v", err) // local.New would create it
		}
	}
	st, err := local.New(dir)
	if err != nil {
		return nil, err
	}
	return &openedCache{Store: st, where: dir}, nil
}
