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
	"runtime"

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
	// Concurrency is how many frames of one NAR are compressed at once;
	// zero means GOMAXPROCS. The file's bytes do not depend on it. Across
	// all NARs being ingested at once, the process holds at most
	// GOMAXPROCS+2 frames of 2 MiB (about 8 MiB each with their buffers
	// and encoder).
	Concurrency int
}

// NAR reads the uncompressed NAR from r, checks its sha256 and size against
// want while streaming, compresses it with zstd, hashes the compressed bytes,
// writes them into s.Create(), and commits them to nar/<nix32 filehash>.nar.zst
// only if the NAR matched. It reads at most NarSize+1 bytes: a longer stream
// is a size mismatch, not an unbounded read. On any mismatch or error nothing
// becomes visible. Memory does not grow with the NAR's size.
//
// The same NAR compressed at the same Level yields the same file, whatever
// the Concurrency, so ingesting it again (here or on another machine)
// rewrites the same key with the same bytes.
//
// ctx is checked between reads; a Read that blocks (a pipe from
// `nix-store --dump`) is only interrupted if the caller closes r when ctx is
// done.
func NAR(ctx context.Context, s store.Store, r io.Reader, want Expect, o Options) (Result, error) {
	res, obj, err := Write(ctx, s, r, want, o)
	if err != nil {
		return Result{}, err
	}
	if err := obj.Pending.Commit(ctx, obj.Key); err != nil {
		return Result{}, fmt.Errorf("ingest: storing %s: %w", res.URL, err)
	}
	return res, nil
}

// Write is NAR without the commit: it returns the NAR file written but
// not visible yet, for the caller to commit (with the objects that name
// it, see store.CommitGroup) or abort.
func Write(ctx context.Context, s store.Store, r io.Reader, want Expect, o Options) (Result, store.Object, error) {
	if want.NarHash == ([32]byte{}) {
		// An all-zero hash is a forgotten field, not a real sha256.
		return Result{}, store.Object{}, errors.New("ingest: Expect.NarHash is not set")
	}
	if want.NarSize > math.MaxInt64-1 {
		return Result{}, store.Object{}, fmt.Errorf("%w: expected NarSize %d is not a plausible size", ErrNarSizeMismatch, want.NarSize)
	}
	level := o.Level
	if level == 0 {
		level = zstd.SpeedDefault
	}
	workers := o.Concurrency
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	// An invalid level fails here, before anything is read.
	encs := encodersFor(level)
	enc, err := encs.get()
	if err != nil {
		return Result{}, store.Object{}, err
	}
	encs.put(enc)

	p, err := s.Create(ctx)
	if err != nil {
		return Result{}, store.Object{}, fmt.Errorf("ingest: %w", err)
	}
	handed := false
	defer func() {
		if !handed {
			p.Abort()
		}
	}()

	fileHash := sha256.New()
	file := &countingWriter{w: io.MultiWriter(p, fileHash)}
	var fw narWriter = newFrameWriter(frames, encs, file, workers)
	if ne, ok := s.(store.NAREncoder); ok {
		// The store's framing (store/chunked: a frame per
		// content-defined chunk) instead of ours.
		enc, err := ne.NAREncoder(file)
		if err != nil {
			return Result{}, store.Object{}, fmt.Errorf("ingest: %w", err)
		}
		fw = &storeEncoder{enc: enc}
	}
	// Waits for the compressions still running. p is aborted, so what
	// they made is discarded.
	defer fw.abort()

	// The staged NAR is hashed again here, as it streams into the
	// compressor: the staging store is not trusted to hold what the
	// builder attested.
	narHash := sha256.New()
	narSize, err := fw.readFrom(ctx, narHash, io.LimitReader(r, int64(want.NarSize)+1))
	if err != nil {
		return Result{}, store.Object{}, err
	}
	if narSize != want.NarSize {
		return Result{}, store.Object{}, fmt.Errorf("%w: expected %d bytes, got %s", ErrNarSizeMismatch, want.NarSize, describeSize(narSize, want.NarSize))
	}
	var got [32]byte
	narHash.Sum(got[:0])
	if got != want.NarHash {
		return Result{}, store.Object{}, fmt.Errorf("%w: expected %s, got %s", ErrNarHashMismatch, describeHash(want.NarHash), describeHash(got))
	}
	if err := fw.finish(ctx); err != nil {
		return Result{}, store.Object{}, err
	}

	res := Result{FileSize: file.n, NarHash: got, NarSize: narSize}
	fileHash.Sum(res.FileHash[:0])
	res.URL = cachelayout.NARKey(nixbase32.EncodeToString(res.FileHash[:]))
	handed = true
	return res, store.Object{Pending: p, Key: res.URL}, nil
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

type countingWriter struct {
	w io.Writer
	n uint64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}

// narWriter compresses a NAR into the file: frameWriter, or a store's own
// encoder (storeEncoder).
type narWriter interface {
	// readFrom reads r to its end, feeding every byte to h as well, and
	// returns how many bytes it read.
	readFrom(ctx context.Context, h hash.Hash, r io.Reader) (uint64, error)
	// finish writes what is left; abort stops early, discarding it.
	finish(ctx context.Context) error
	abort()
}

// storeEncoder feeds a store.NAREncoder.
type storeEncoder struct {
	enc    io.WriteCloser
	closed bool
}

func (e *storeEncoder) readFrom(ctx context.Context, h hash.Hash, r io.Reader) (uint64, error) {
	buf := make([]byte, bufSize)
	var n uint64
	for {
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("ingest: after %d bytes: %w", n, err)
		}
		m, rerr := r.Read(buf)
		if m > 0 {
			h.Write(buf[:m]) // never fails
			if _, err := e.enc.Write(buf[:m]); err != nil {
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

func (e *storeEncoder) finish(context.Context) error {
	e.closed = true
	if err := e.enc.Close(); err != nil {
		return fmt.Errorf("ingest: compressing: %w", err)
	}
	return nil
}

func (e *storeEncoder) abort() {
	if !e.closed {
		e.closed = true
		e.enc.Close() // stops its goroutine; p is aborted
	}
}
