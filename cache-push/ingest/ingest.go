// Package ingest streams an uncompressed NAR into a store as a Nix binary
// cache file (nar/<filehash>.nar.zst), checking it against the NarHash and
// NarSize that the caller trusts, in one pass and in constant memory.
//
// The one pass is read → sha256 (NarHash) → zstd → sha256 (FileHash) →
// store.Pending. Nothing is committed unless the NAR matched, so a corrupt or
// substituted NAR never becomes visible in the cache.
package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
)

// The error tree: every mismatch matches ErrMismatch and one of its children.
var (
	// ErrMismatch means the NAR read differs from what the caller expected.
	ErrMismatch = errors.New("ingest: NAR does not match expectation")
	// ErrNarSizeMismatch means the stream was shorter or longer than NarSize.
	ErrNarSizeMismatch = &sentinel{"ingest: NAR size mismatch", ErrMismatch}
	// ErrNarHashMismatch means the NAR's sha256 differs from NarHash.
	ErrNarHashMismatch = &sentinel{"ingest: NAR hash mismatch", ErrMismatch}
)

type sentinel struct {
	msg    string
	parent error
}

func (e *sentinel) Error() string { return e.msg }
func (e *sentinel) Unwrap() error { return e.parent }

// Expect is what the NAR must be, typically taken from a verified
// provenance statement.
type Expect struct {
	NarHash [32]byte // sha256 of the uncompressed NAR
	NarSize uint64   // length of the uncompressed NAR in bytes
}

// Result describes the stored file, with the fields a narinfo needs.
type Result struct {
	URL      string   // store key and narinfo URL: "nar/<nix32 FileHash>.nar.zst"
	FileHash [32]byte // sha256 of the compressed file
	FileSize uint64   // length of the compressed file
	NarHash  [32]byte // equal to Expect.NarHash
	NarSize  uint64   // equal to Expect.NarSize
}

// Options tune compression. The zero value is the recommended setting.
type Options struct {
	// Level is the zstd level; zero means zstd.SpeedDefault (about zstd -3).
	Level zstd.EncoderLevel
	// Concurrency is the number of goroutines compressing one NAR; zero
	// means 1. With more than 1, the NAR is cut into jobs of four windows
	// (32 MiB at the default level) compressed in parallel: on 2 cores,
	// Concurrency 2 ran about 1.35× faster than 1, but the heap peaked near
	// 300 MiB instead of about 20 MiB, and the allocations grow with the
	// NAR's size (the live memory does not). 1 is right when several NARs
	// are pushed at once; see BenchmarkNAR.
	Concurrency int
}

// bufSize is the read size: large enough that per-call overheads vanish, and
// a multiple of the zstd block size (128 KiB).
const bufSize = 256 << 10

// bufPool holds read buffers: a pusher ingests hundreds of small NARs a
// second, and a fresh buffer each was most of the garbage it made.
var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// NAR reads the uncompressed NAR from r, checks its sha256 and size against
// want while streaming, compresses it with zstd, hashes the compressed bytes,
// writes them into s.Create(), and commits them to nar/<nix32 filehash>.nar.zst
// only if the NAR matched. It reads at most NarSize+1 bytes: a longer stream
// is a size mismatch, not an unbounded read. On any mismatch or error nothing
// becomes visible. Memory does not grow with the NAR's size.
//
// The same NAR compressed with the same Options yields the same file, so
// ingesting it again rewrites the same key with the same bytes.
//
// ctx is checked between reads; a Read that blocks (a pipe from
// `nix-store --dump`) is only interrupted if the caller closes r when ctx is
// done.
func NAR(ctx context.Context, s store.Store, r io.Reader, want Expect, o Options) (Result, error) {
	if want.NarHash == ([32]byte{}) {
		// An all-zero hash is a forgotten field, not a real sha256.
		return Result{}, errors.New("ingest: Expect.NarHash is not set")
	}
	if want.NarSize > math.MaxInt64-1 {
		return Result{}, fmt.Errorf("%w: expected NarSize %d is not a plausible size", ErrNarSizeMismatch, want.NarSize)
	}
	level := o.Level
	if level == 0 {
		level = zstd.SpeedDefault
	}
	conc := max(o.Concurrency, 1)

	p, err := s.Create(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("ingest: %w", err)
	}
	defer p.Abort()

	fileHash := sha256.New()
	file := &countingWriter{w: io.MultiWriter(p, fileHash)}
	enc, err := getEncoder(level, conc)
	if err != nil {
		return Result{}, err
	}
	enc.Reset(file)
	closed := false
	defer func() {
		if !closed {
			// Stops the encoder's goroutines. p is aborted, so whatever
			// Close flushes is discarded. The encoder is not pooled: its
			// state after a failed write is not worth reasoning about.
			enc.Close()
		}
	}()

	narHash := sha256.New()
	narSize, err := copyNAR(ctx, enc, narHash, io.LimitReader(r, int64(want.NarSize)+1))
	if err != nil {
		return Result{}, err
	}
	if narSize != want.NarSize {
		return Result{}, fmt.Errorf("%w: expected %d bytes, got %s", ErrNarSizeMismatch, want.NarSize, describeSize(narSize, want.NarSize))
	}
	var got [32]byte
	narHash.Sum(got[:0])
	if got != want.NarHash {
		return Result{}, fmt.Errorf("%w: expected %s, got %s", ErrNarHashMismatch, describeHash(want.NarHash), describeHash(got))
	}
	closed = true
	if err := enc.Close(); err != nil {
		return Result{}, fmt.Errorf("ingest: compressing: %w", err)
	}
	putEncoder(level, conc, enc)

	res := Result{FileSize: file.n, NarHash: got, NarSize: narSize}
	fileHash.Sum(res.FileHash[:0])
	res.URL = cachelayout.NARKey(nixbase32.EncodeToString(res.FileHash[:]))
	if err := p.Commit(ctx, res.URL); err != nil {
		return Result{}, fmt.Errorf("ingest: storing %s: %w", res.URL, err)
	}
	return res, nil
}

// copyNAR feeds r to both the NAR hash and the compressor and returns the
// number of bytes read. ctx is checked once per buffer.
func copyNAR(ctx context.Context, enc *zstd.Encoder, narHash hash.Hash, r io.Reader) (uint64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n uint64
	for {
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("ingest: after %d bytes: %w", n, err)
		}
		m, rerr := r.Read(buf)
		if m > 0 {
			narHash.Write(buf[:m]) // never fails
			if _, err := enc.Write(buf[:m]); err != nil {
				return n, fmt.Errorf("ingest: compressing after %d bytes: %w", n, err)
			}
			n += uint64(m)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("ingest: reading NAR after %d bytes: %w", n, rerr)
		}
	}
}

func describeSize(got, want uint64) string {
	if got > want {
		// Reading stopped at want+1, so the true length is unknown.
		return "more"
	}
	return fmt.Sprintf("%d (stream ended early)", got)
}

// describeHash writes a sha256 in both forms people compare it with: Nix's
// narinfo form and the lowercase hex of provenance statements.
func describeHash(h [32]byte) string {
	return "sha256:" + nixbase32.EncodeToString(h[:]) + " (hex " + hex.EncodeToString(h[:]) + ")"
}

// encoderPools holds idle encoders per (level, concurrency). Creating a zstd
// encoder costs about 10 ms (it allocates and clears its match tables), more
// than compressing a typical small store path, so encoders are reused.
// sync.Pool lets the garbage collector drop idle ones.
var encoderPools sync.Map // encoderKey → *sync.Pool

type encoderKey struct {
	level zstd.EncoderLevel
	conc  int
}

func getEncoder(level zstd.EncoderLevel, conc int) (*zstd.Encoder, error) {
	if pool, ok := encoderPools.Load(encoderKey{level, conc}); ok {
		if enc, ok := pool.(*sync.Pool).Get().(*zstd.Encoder); ok {
			return enc, nil
		}
	}
	opts := []zstd.EOption{
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(conc),
		// Write one frame even for an empty input, as the zstd CLI does.
		zstd.WithZeroFrames(true),
	}
	if conc > 1 {
		// Plain concurrency only overlaps one block with the caller;
		// jobs let several cores compress one stream.
		opts = append(opts, zstd.WithConcurrentBlocks(true))
	}
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		return nil, fmt.Errorf("ingest: zstd level %v, concurrency %d: %w", level, conc, err)
	}
	return enc, nil
}

func putEncoder(level zstd.EncoderLevel, conc int, enc *zstd.Encoder) {
	pool, _ := encoderPools.LoadOrStore(encoderKey{level, conc}, new(sync.Pool))
	pool.(*sync.Pool).Put(enc)
}

type countingWriter struct {
	w io.Writer
	n uint64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}
