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
	dir   string
	s3    s3Flags
	chunk chunkFlags
}

func (f *cacheFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dir, "dir", "", "cache directory (default: the data directory's cache/)")
	f.s3.register(cmd)
	f.chunk.register(cmd)
}

// chunkFlags select how NAR files are stored (wire.StoreOptions.Chunking)
// and, for the commands that write them, how they are made durable
// (Flush, with registerFlush).
type chunkFlags struct {
	mode   string
	shared string
	flush  string
}

// registerFlush adds --flush, for the commands that write the cache.
func (f *chunkFlags) registerFlush(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.flush, "flush", wire.FlushFiles, "how a cache directory makes writes durable before results are acknowledged: fsync each file and directory (files), or sync the cache's whole filesystem once per round of writes (filesystem, Linux only, elsewhere as files: fewer system calls, for a filesystem the cache has to itself; it also waits for every other dirty file there; not with S3)")
}

func (f *chunkFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.mode, "chunking", wire.ChunkingNone, "store NAR files whole (none) or as content-defined chunks shared between NARs (fastcdc); a chunked cache is served and collected with --chunking fastcdc too")
	cmd.Flags().StringVar(&f.shared, "shared-chunks", "", "with --chunking fastcdc: keep chunks in this directory (with --s3-*: this prefix of the bucket), shared with other caches; tenants sharing it can tell which chunks the others stored")
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
	o := wire.StoreOptions{Dir: f.dir, S3: opts, MustExist: mustExist, Sweep: sweep, Chunking: f.chunk.mode, SharedChunks: f.chunk.shared, Flush: f.chunk.flush}
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
