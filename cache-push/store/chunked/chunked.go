// Package chunked is a store.Store that keeps each NAR file as
// content-addressed chunks plus a chunk list, over any other store.Store
// (store/local, store/s3), so that two NARs sharing most of their bytes
// (two versions of one package) share most of their storage.
//
// # Layout
//
// A NAR file written under "nar/<filehash>.nar.zst" is cut into chunks,
// each stored once under "chunks/<2 hex>/<sha256 hex of its bytes>"; the
// NAR's key then holds a chunk list (list.go) naming them in order. Every
// other key (narinfos, sidecars, nix-cache-info) is passed through
// unchanged. Reading a NAR key streams its chunks in order, so readers,
// the cache server included, see the very bytes that were written: the
// FileHash and FileSize the pusher computed describe what is served, and
// stock nix sees an ordinary binary cache. A reader fetches a few chunks
// ahead, several at once, within a few MiB (reader.go).
//
// Chunks are byte ranges of the written file, cut where its zstd frames
// end. For dedup to work, a NAR must be compressed as one zstd frame per
// content-defined chunk of the uncompressed NAR: NAREncoder does that
// (FastCDC, then each chunk compressed alone; concatenated zstd frames
// are one valid zstd stream). ingest uses it when the store offers it
// (store.NAREncoder). A file that is not made of small frames (another
// compressor, one big frame) is still stored and read back exactly, cut
// into pieces of MaxPiece bytes, but shares nothing.
//
// # Crash safety
//
// Chunks are written first, each atomically by the underlying store, and
// the chunk list last, by one atomic Commit: a writer killed mid-NAR
// leaves chunks no list names (collected by gc after its grace period)
// and no visible entry; a visible list never names a chunk that was not
// written. Chunks are never replaced by different bytes (their key is
// their hash), so a reader opened before a replacing Commit keeps reading
// the old NAR.
//
// # Garbage collection
//
// CollectChunks deletes chunks that no chunk list names and that are older
// than its cutoff. A writer that finds a chunk already stored reuses it,
// and rewrites it (refreshing its modification time) if it is older than
// RefreshAge: a chunk that an unfinished write relies on is therefore never
// older than RefreshAge plus the time the write takes, and a cutoff older
// than that (gc's grace, 24 hours by default, against RefreshAge's 6)
// never collects it.
//
// # Sharing
//
// By default the chunks live in the wrapped store itself, so they are
// shared between the NARs of one cache only. Options.Chunks can name
// another store, shared by several caches (tenants): more dedup, but a
// shared chunk store lets one tenant learn whether another stored a given
// chunk (from how fast a write is, or from the chunk's presence), so it is
// for operators whose tenants trust each other; see docs/tenants.md. Such a
// store is collected with Collect over all the caches that use it.
package chunked

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
)

// Chunk sizes of the uncompressed NAR (FastCDC's minimum, average and
// maximum). Smaller chunks find more shared bytes between versions, at
// the cost of more objects, a little compression and serving speed (each
// chunk is a file to open, or a GET). Measured (BenchmarkDedup,
// BenchmarkServe, one run each, Go toolchain NARs):
//
//	sizes (KiB)   1.26.7+1.26.8   1.27.2+1.27.3   chunks   served (× whole)   CPU (× whole)
//	16/64/256     0.593×          0.575×          2,433    0.52 to 0.60       2.0 to 2.1
//	32/96/256     0.599×          0.571×          1,538    0.66 to 0.85       1.6 to 1.7
//	64/128/256    0.603×          0.571×          1,288
//
// 16/64/256 (casync's and nix-casync's average) was the default before;
// on google.golang.org/api v0.283.0 + v0.284.0 the second version added
// 8.8 MB at 16/64/256 and 12.5 MB at Attic's 64/128/256.
//
// The chunker is github.com/jotfs/fastcdc-go: FastCDC, small, no
// dependencies, 515 to 775 MB/s here against 200 to 330 MB/s for
// restic/chunker (Rabin fingerprints, not FastCDC) on the same 64 MiB of
// a Go toolchain's NAR; kalbasit/fastcdc is not served by the module
// proxy.
const (
	DefaultMinSize = 32 << 10
	DefaultAvgSize = 96 << 10
	DefaultMaxSize = 256 << 10
)

// DefaultRefreshAge is Options.RefreshAge when zero: well under gc's
// default grace of 24 hours.
const DefaultRefreshAge = 6 * time.Hour

// DefaultUploads is Options.Uploads when zero.
const DefaultUploads = 4

// Options configure a chunked store. The zero value is the recommended
// setting.
type Options struct {
	// Chunks is where chunks go: nil keeps them in the wrapped store,
	// under cachelayout.ChunkPrefix. Another store shares them with the
	// other caches that name it (see Sharing in the package doc).
	Chunks store.Store
	// MinSize, AvgSize and MaxSize bound NAREncoder's chunks of the
	// uncompressed NAR; zero means the defaults above.
	MinSize, AvgSize, MaxSize int
	// Level is NAREncoder's zstd level; zero means
	// zstd.SpeedBetterCompression. Each chunk is compressed alone and
	// only once, while it is stored, so the stronger level pays for
	// what compressing small pieces loses: on two Go toolchains a patch
	// release apart (16/64/256 KiB chunks) it stored 0.593× of the whole
	// NARs against 0.607× at
	// zstd.SpeedDefault, for 15% more time writing (BenchmarkDedup).
	// zstd.SpeedBestCompression stored 0.566× against 0.599× (32/96/256
	// KiB), but wrote 3 to 5 times slower than this level.
	Level zstd.EncoderLevel
	// RefreshAge: a reused chunk older than this is rewritten, so that
	// gc does not take it from under a write in progress.
	RefreshAge time.Duration
	// Uploads is how many chunks one write stores at once.
	Uploads int
}

// Store is a chunked store.Store; build it with New.
type Store struct {
	inner  store.Store
	chunks store.Store
	o      Options
	enc    *zstd.Encoder // for EncodeAll, which is safe for concurrent use
}

var (
	_ store.Store      = (*Store)(nil)
	_ store.InfoOpener = (*Store)(nil)
	_ store.NAREncoder = (*Store)(nil)
)

// New wraps inner.
func New(inner store.Store, o Options) (*Store, error) {
	if inner == nil {
		return nil, errors.New("chunked: no store to wrap")
	}
	if o.MinSize == 0 {
		o.MinSize = DefaultMinSize
	}
	if o.AvgSize == 0 {
		o.AvgSize = DefaultAvgSize
	}
	if o.MaxSize == 0 {
		o.MaxSize = DefaultMaxSize
	}
	if !(64 <= o.MinSize && o.MinSize < o.AvgSize && o.AvgSize < o.MaxSize && o.MaxSize <= maxPiece/2) {
		return nil, fmt.Errorf("chunked: chunk sizes %d/%d/%d: want 64 ≤ min < avg < max ≤ %d", o.MinSize, o.AvgSize, o.MaxSize, maxPiece/2)
	}
	if o.Level == 0 {
		o.Level = zstd.SpeedBetterCompression
	}
	if o.RefreshAge == 0 {
		o.RefreshAge = DefaultRefreshAge
	}
	if o.RefreshAge < 0 || o.Uploads < 0 {
		return nil, errors.New("chunked: negative RefreshAge or Uploads")
	}
	if o.Uploads == 0 {
		o.Uploads = DefaultUploads
	}
	// One frame per chunk with its content size and checksum, and the
	// same bytes for the same chunk every time (EncodeAll compresses in
	// the calling goroutine, deterministically; the concurrency is how
	// many calls run at once), so equal chunks get equal keys.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(o.Level), zstd.WithEncoderConcurrency(encoders), zstd.WithZeroFrames(true))
	if err != nil {
		return nil, fmt.Errorf("chunked: zstd level %v: %w", o.Level, err)
	}
	s := &Store{inner: inner, chunks: o.Chunks, o: o, enc: enc}
	if s.chunks == nil {
		s.chunks = inner
	}
	return s, nil
}

// chunkKey names a chunk by the sha256 of its bytes; two hex digits of
// fan-out keep directories of a local store small.
func chunkKey(sum [32]byte) string {
	h := hex.EncodeToString(sum[:])
	return cachelayout.ChunkPrefix + h[:2] + "/" + h
}

// isNAR: keys under nar/ are chunked.
func isNAR(key string) bool { return strings.HasPrefix(key, cachelayout.NARPrefix) }

// checkKey refuses invalid keys and the chunks' own.
func checkKey(key string) error {
	if err := store.ValidKey(key); err != nil {
		return err
	}
	if strings.HasPrefix(key, cachelayout.ChunkPrefix) {
		return fmt.Errorf("%w: %q: %s is kept for chunks", store.ErrInvalidKey, key, cachelayout.ChunkPrefix)
	}
	return nil
}

// Open returns the object's content; a NAR's chunks are read in order.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, _, err := s.OpenInfo(ctx, key)
	return rc, err
}

// OpenInfo opens the object and describes it: for a NAR, the size is that
// of the NAR file, and the time that of its chunk list.
func (s *Store) OpenInfo(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	if err := checkKey(key); err != nil {
		return nil, store.Info{}, err
	}
	rc, fi, err := store.OpenInfo(ctx, s.inner, key)
	if err != nil || !isNAR(key) {
		return rc, fi, err
	}
	var br *bufio.Reader
	var head []byte
	if ra, ok := rc.(*os.File); ok {
		// A file: peek without buffering, so that a whole NAR is
		// served from the file itself (sendfile).
		head = make([]byte, len(listMagic))
		n, _ := ra.ReadAt(head, 0)
		head = head[:n]
		if !isList(head) {
			return rc, fi, nil
		}
		br = bufio.NewReaderSize(rc, 64<<10)
	} else {
		br = bufio.NewReaderSize(rc, 64<<10)
		head, _ = br.Peek(len(listMagic))
		if !isList(head) {
			return readCloser{br, rc}, fi, nil // stored whole, before chunking
		}
	}
	l, err := parseList(br)
	rc.Close()
	if err != nil {
		return nil, store.Info{}, fmt.Errorf("chunked: %s: %w", key, err)
	}
	fi.Size = l.size
	return newChunkReader(ctx, s.chunks, key, l.entries), fi, nil
}

// Stat describes the object; for a NAR it reads the head of its list.
func (s *Store) Stat(ctx context.Context, key string) (store.Info, error) {
	if err := checkKey(key); err != nil {
		return store.Info{}, err
	}
	if !isNAR(key) {
		return s.inner.Stat(ctx, key)
	}
	rc, fi, err := store.OpenInfo(ctx, s.inner, key)
	if err != nil {
		return store.Info{}, err
	}
	defer rc.Close()
	return s.describe(key, fi, rc)
}

// describe turns the Info of a stored NAR key into the NAR file's.
func (s *Store) describe(key string, fi store.Info, r io.Reader) (store.Info, error) {
	br := bufio.NewReaderSize(r, 512)
	head, _ := br.Peek(len(listMagic))
	if !isList(head) {
		return fi, nil
	}
	size, err := readHeader(br)
	if err != nil {
		return store.Info{}, fmt.Errorf("chunked: %s: %w", key, err)
	}
	fi.Size = size
	return fi, nil
}

// Delete removes the object; a NAR's chunks stay until CollectChunks.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	return s.inner.Delete(ctx, key)
}

// List lists the objects as they read: NARs with their files' sizes,
// chunks not at all. A NAR's size costs a read of its list's head.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	if err := store.ValidPrefix(prefix); err != nil {
		return err
	}
	var fnErr error
	err := s.inner.List(ctx, prefix, func(fi store.Info) error {
		if strings.HasPrefix(fi.Key, cachelayout.ChunkPrefix) {
			return nil
		}
		if isNAR(fi.Key) {
			var err error
			fi, err = s.Stat(ctx, fi.Key)
			if errors.Is(err, store.ErrNotFound) {
				return nil // deleted since listed
			}
			if err != nil {
				return err
			}
		}
		if err := fn(fi); err != nil {
			fnErr = err
			return err
		}
		return nil
	})
	if fnErr != nil {
		return fnErr // unchanged, as the contract says
	}
	return err
}

type readCloser struct {
	io.Reader
	io.Closer
}

// RemoveStale passes gc's cleanup of interrupted uploads (gc.Uploads, an
// S3 store's) on to the wrapped store and the chunk store.
func (s *Store) RemoveStale(ctx context.Context, age time.Duration) error {
	type uploads interface {
		RemoveStale(context.Context, time.Duration) error
	}
	var errs []error
	for _, st := range []store.Store{s.inner, s.o.Chunks} {
		if u, ok := st.(uploads); ok {
			errs = append(errs, u.RemoveStale(ctx, age))
		}
	}
	return errors.Join(errs...)
}
