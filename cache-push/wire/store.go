// Package wire assembles a cache pusher from its parts, one way for every
// command that runs one (`provenix up`, `provenix cache-push`) or opens a
// cache (`provenix cache serve`, `provenix cache gc`): OpenStore opens the
// cache's store, a directory or an S3 bucket, and StartPusher connects a
// pusher to NATS, the store, the policy and the cache key and starts it.
// Commands parse flags into these options; what is opened and started,
// and how, is decided here.
package wire

import (
	"context"
	"errors"
	"fmt"
	"os"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/chunked"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cache-push/store/s3"
)

// ErrOptions: the options name no usable store or pusher (S3 options
// that do not validate, a directory that must exist and does not, both a
// directory and a bucket). Commands report it as a usage error.
var ErrOptions = errors.New("invalid options")

// StoreOptions say where a binary cache lives: Dir, or the S3 bucket of S3.
type StoreOptions struct {
	// Dir is the cache directory, created unless MustExist.
	Dir string
	// S3, when set instead of Dir, is the bucket (it must exist).
	S3 *s3.Options
	// MustExist is for commands that only read or delete: a mistyped
	// directory then fails instead of serving or collecting an empty
	// cache.
	MustExist bool
	// Sweep removes abandoned S3 uploads periodically until Close
	// (s3.Store.Start, on the schedule of S3's StaleEvery and StaleAge):
	// for a pusher, which leaves them when it dies mid-upload. A
	// directory needs no sweeping (its writes are temp files renamed).
	Sweep bool
	// Chunking is how NAR files are stored: ChunkingNone (or "") whole,
	// ChunkingFastCDC as content-defined chunks shared between NARs
	// (store/chunked). A cache written chunked must be served and
	// collected with chunking on too.
	Chunking string
	// SharedChunks, with chunking, keeps the chunks in a store shared
	// by several caches instead of in this one: a directory, or with S3
	// a prefix of the same bucket. Tenants sharing chunks can learn
	// which chunks the others stored (docs/tenants.md).
	SharedChunks string
	// Flush is how a cache directory makes its writes durable:
	// FlushFiles (or "") fsyncs each file and directory written,
	// FlushFilesystem syncs the cache's whole filesystem once per round
	// of writes (local.WithFilesystemFlush). Not for S3.
	Flush string
}

// Flush modes, the values of StoreOptions.Flush (and of --flush).
const (
	FlushFiles      = "files"
	FlushFilesystem = "filesystem"
)

// Chunking modes, the values of StoreOptions.Chunking (and of
// --chunking).
const (
	ChunkingNone    = "none"
	ChunkingFastCDC = "fastcdc"
)

// Store is an open cache store. Close it when done: it stops the S3
// sweeper.
type Store struct {
	store.Store
	// Where names the cache to a human: the directory, or
	// s3://bucket/prefix.
	Where string
	s3    *s3.Store
	// chunkS3 is the shared chunks' bucket prefix, if any.
	chunkS3 *s3.Store
}

// How many results a pusher handles at once unless told
// (Store.DefaultConcurrency).
const (
	// DirConcurrency, for a cache directory. One at a time leaves the
	// pusher waiting on fsyncs and NATS round trips; results are
	// independent (votes and builder records are updated with
	// compare-and-set), so several run side by side, and the more wait
	// on one round of group commit, the fewer rounds: 256 handled 1.54x
	// the results per second of 32 (BenchmarkConsumeResults, mean of
	// three runs each, 1,381 against 896 results/s). Each handler holds
	// one result (at most queue.MaxResultSize), and the NARs being
	// ingested share one pool of compression frames.
	DirConcurrency = 256
	// S3Concurrency, for S3: an open write to S3 of more than 1 MiB (a
	// NAR, mostly) holds one multipart part in memory
	// (s3.DefaultPartSize, 16 MiB), and a smaller one its bytes, so 32
	// handlers ingesting large NARs may hold about 600 MiB.
	S3Concurrency = 32
)

// DefaultConcurrency is how many results a pusher writing to s handles at
// once unless told: DirConcurrency, or S3Concurrency when s (or its
// shared chunks) is in S3.
func (s *Store) DefaultConcurrency() int {
	if s.s3 != nil || s.chunkS3 != nil {
		return S3Concurrency
	}
	return DirConcurrency
}

// OpenStore opens the store o selects. An S3 bucket is checked: it must
// exist and the credentials must reach it.
func OpenStore(ctx context.Context, o StoreOptions) (*Store, error) {
	switch o.Chunking {
	case "", ChunkingNone:
		if o.SharedChunks != "" {
			return nil, fmt.Errorf("%w: shared chunks need --chunking %s", ErrOptions, ChunkingFastCDC)
		}
	case ChunkingFastCDC:
	default:
		return nil, fmt.Errorf("%w: chunking %q: want %s or %s", ErrOptions, o.Chunking, ChunkingNone, ChunkingFastCDC)
	}
	switch o.Flush {
	case "", FlushFiles:
	case FlushFilesystem:
		if o.S3 != nil {
			return nil, fmt.Errorf("%w: --flush %s is for a cache directory, not S3", ErrOptions, FlushFilesystem)
		}
	default:
		return nil, fmt.Errorf("%w: flush %q: want %s or %s", ErrOptions, o.Flush, FlushFiles, FlushFilesystem)
	}
	st, err := openStore(ctx, o)
	if err != nil || o.Chunking != ChunkingFastCDC {
		return st, err
	}
	var co chunked.Options
	if o.SharedChunks != "" {
		shared := o
		shared.Dir, shared.MustExist = o.SharedChunks, false
		if o.S3 != nil {
			s3o := *o.S3
			s3o.Prefix = o.SharedChunks
			shared.Dir, shared.S3 = "", &s3o
		}
		shared.Chunking, shared.SharedChunks = "", ""
		cs, err := openStore(ctx, shared)
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("shared chunks: %w", err)
		}
		st.chunkS3 = cs.s3
		co.Chunks = cs.Store
	}
	cst, err := chunked.New(st.Store, co)
	if err != nil {
		st.Close()
		return nil, err
	}
	st.Store = cst
	return st, nil
}

func openStore(ctx context.Context, o StoreOptions) (*Store, error) {
	if o.S3 != nil {
		if o.Dir != "" {
			return nil, fmt.Errorf("%w: a cache directory and an S3 bucket exclude each other", ErrOptions)
		}
		return openS3(ctx, o)
	}
	if o.Dir == "" {
		return nil, fmt.Errorf("%w: no cache directory and no S3 bucket", ErrOptions)
	}
	if o.MustExist {
		if _, err := os.Stat(o.Dir); err != nil {
			return nil, fmt.Errorf("%w: cache directory: %w", ErrOptions, err) // local.New would create it
		}
	}
	var opts []local.Option
	if o.Flush == FlushFilesystem {
		opts = append(opts, local.WithFilesystemFlush())
	}
	st, err := local.New(o.Dir, opts...)
	if err != nil {
		return nil, err
	}
	return &Store{Store: st, Where: o.Dir}, nil
}

func openS3(ctx context.Context, o StoreOptions) (*Store, error) {
	st, err := s3.New(*o.S3)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if err := st.Check(ctx); err != nil {
		return nil, fmt.Errorf("s3 cache at %s: %w", o.S3.Endpoint, err)
	}
	if o.Sweep {
		if err := st.Start(); err != nil {
			return nil, err
		}
	}
	return &Store{Store: st, Where: "s3://" + o.S3.Bucket + "/" + o.S3.Prefix, s3: st}, nil
}

// Close stops the S3 sweepers, if any run, and waits for them.
func (s *Store) Close() error {
	var errs []error
	for _, st := range []*s3.Store{s.s3, s.chunkS3} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
}
