// Package store defines the storage interface behind Provenix's Nix binary
// cache and the rules every implementation follows.
//
// A Store holds opaque objects under slash-separated keys laid out like a Nix
// binary cache: "nix-cache-info", "<hash32>.narinfo",
// "<hash32>.provenance.json" and "nar/<filehash>.nar.zst". Implementations
// live in their own packages (store/local, store/s3) and must pass the shared
// conformance suite in store/storetest.
//
// # Contract
//
// Keys: every method that takes a key rejects it with an error matching
// ErrInvalidKey unless ValidKey(key) == nil. Keys are case-sensitive, but a
// store on a case-insensitive filesystem may fold case; the cache layout only
// uses lower-case hashes, so this never matters in practice. One key must not
// be a directory-prefix of another ("a/b" and "a/b/c" cannot both exist); a
// store may reject the second write with an error. The cache layout never
// needs that.
//
// Writes: an object is written through a Pending returned by Create and only
// becomes visible when Commit succeeds. Commit is atomic (readers see the old
// object or the new one, never a mix or a prefix) and durable (once it
// returns nil the object survives a crash or power loss). Commit replaces an
// existing object. Concurrent Commits to the same key leave exactly one of
// the written values. A Pending that is aborted, whose Commit fails, or whose
// writer crashed is never visible, although it may occupy space until the
// store cleans it up. A Reader opened before a replacing Commit keeps reading
// the old content to the end.
//
// Reads: Open and Stat return an error matching ErrNotFound when no object
// exists under the key. Prefixes of keys (such as "nar") are not objects.
//
// Deletes: Delete of an absent object succeeds, so callers can retry it.
//
// Listing: List calls fn once for every committed object whose key starts
// with prefix (a plain string prefix, "" lists everything), in no particular
// order. Objects committed or deleted while List runs may or may not be
// reported. If fn returns an error, List stops and returns that error
// unchanged.
//
// Contexts: a done ctx makes calls fail with an error wrapping ctx.Err().
// Commit called with a done ctx makes nothing visible.
//
// Errors: errors other than ErrNotFound, ErrInvalidKey, ErrFinished and
// context errors are I/O failures; the caller may retry the whole operation
// because every write is a full replacement and Delete is idempotent. A
// write that fails because the store is full matches ErrNoSpace: it is one
// of these transient failures (retry once space is freed), and like any
// failed write it leaves nothing visible.
//
// Concurrency: a Store is safe for concurrent use by multiple goroutines. A
// Pending is not; one goroutine writes it and then commits or aborts it.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

var (
	// ErrNotFound means no object exists under the key.
	ErrNotFound = errors.New("store: not found")
	// ErrInvalidKey means the key or prefix breaks the rules of ValidKey.
	ErrInvalidKey = errors.New("store: invalid key")
	// ErrFinished means a Pending was used after Commit or Abort.
	ErrFinished = errors.New("store: pending object already finished")
	// ErrTooLarge means an object exceeded the limit given to ReadAll.
	ErrTooLarge = errors.New("store: object too large")
	// ErrNoSpace means a write failed because the store is full (no space
	// or no inodes left on a disk, a quota exhausted). Retrying after space
	// is freed succeeds; nothing of the failed write is visible.
	ErrNoSpace = errors.New("store: out of space")
)

// MaxKeyLen bounds keys so that they fit S3 (1024 bytes) and file paths with
// room to spare; the longest key of the cache layout is about 70 bytes.
const MaxKeyLen = 512

// maxSegmentLen keeps every path segment a legal file name (NAME_MAX is 255
// on Linux and macOS), so that keys map to local files without surprises.
const maxSegmentLen = 255

// Info describes a committed object.
type Info struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Store holds the binary cache's objects under slash-separated keys. See the
// package documentation for the contract every implementation follows.
type Store interface {
	// Create starts a new object whose key is chosen at Commit, so a writer
	// can name an object after a hash of its content
	// (nar/<filehash>.nar.zst).
	Create(ctx context.Context) (Pending, error)
	// Open returns a reader for the object's content; the caller closes it.
	// It fails with ErrNotFound if there is no object under key.
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes the object under key or fails with ErrNotFound.
	Stat(ctx context.Context, key string) (Info, error)
	// Delete removes the object under key; removing an absent object
	// succeeds.
	Delete(ctx context.Context, key string) error
	// List calls fn for every object whose key starts with prefix.
	List(ctx context.Context, prefix string, fn func(Info) error) error
}

// InfoOpener is implemented by stores that open an object and describe it
// in one step: one open+fstat on disk, one GET on S3. A server answering a
// request needs both (the size goes out as Content-Length before the body);
// Stat then Open would cost a second lookup, a second round trip on S3, and
// could describe another object than the one it reads.
type InfoOpener interface {
	// OpenInfo is Open that also returns the Info of the object opened.
	OpenInfo(ctx context.Context, key string) (io.ReadCloser, Info, error)
}

// OpenInfo opens the object under key and describes it, in one step when s
// is an InfoOpener and with Stat then Open otherwise.
func OpenInfo(ctx context.Context, s Store, key string) (io.ReadCloser, Info, error) {
	if o, ok := s.(InfoOpener); ok {
		return o.OpenInfo(ctx, key)
	}
	fi, err := s.Stat(ctx, key)
	if err != nil {
		return nil, Info{}, err
	}
	rc, err := s.Open(ctx, key)
	if err != nil {
		return nil, Info{}, err
	}
	return rc, fi, nil
}

// NAREncoder is implemented by stores that want NAR files compressed their
// own way: store/chunked wants one zstd frame per content-defined chunk,
// so that equal chunks of different NARs are stored once. ingest
// compresses through it instead of its own zstd encoder; the output is
// still one valid zstd stream.
type NAREncoder interface {
	// NAREncoder returns a writer that compresses what it is given into
	// w. Close flushes it; it must be called, also after a failure.
	NAREncoder(w io.Writer) (io.WriteCloser, error)
}

// Pending is an object being written. Writes are buffered out of sight of
// readers until Commit.
type Pending interface {
	io.Writer
	// Commit makes the bytes written so far visible under key, atomically
	// and durably; it replaces an existing object. If a Write failed, Commit
	// fails too. Commit finishes the Pending whatever its outcome: on
	// failure nothing new is visible and the bytes are discarded. Calling
	// Commit or Write on a finished Pending fails with ErrFinished.
	Commit(ctx context.Context, key string) error
	// Abort discards the object. It is safe to call after Commit (no-op)
	// and more than once, so `defer p.Abort()` is the idiom.
	Abort() error
}

// ValidKey reports whether key may name an object: non-empty, at most
// MaxKeyLen bytes, made of "/"-separated segments that are non-empty, at most
// 255 bytes, do not start with "." and contain only [A-Za-z0-9._+-].
//
// Forbidding a leading dot rules out "." and ".." (no traversal), hidden
// files, and names a store keeps for itself (store/local's ".tmp"); no key of
// the Nix cache layout starts with one.
func ValidKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidKey, len(key), MaxKeyLen)
	}
	segStart := 0
	for i := 0; i <= len(key); i++ {
		if i < len(key) && key[i] != '/' {
			if !keyByte(key[i]) {
				return fmt.Errorf("%w: %q: byte %#x at offset %d not allowed", ErrInvalidKey, key, key[i], i)
			}
			continue
		}
		seg := key[segStart:i]
		switch {
		case seg == "":
			return fmt.Errorf("%w: %q: empty segment (leading, trailing or double slash)", ErrInvalidKey, key)
		case seg[0] == '.':
			return fmt.Errorf("%w: %q: segment %q starts with a dot", ErrInvalidKey, key, seg)
		case len(seg) > maxSegmentLen:
			return fmt.Errorf("%w: %q: segment longer than %d bytes", ErrInvalidKey, key, maxSegmentLen)
		}
		segStart = i + 1
	}
	return nil
}

// ValidPrefix reports whether prefix may be passed to List: empty, or a
// string that a valid key can start with, as checked by ValidKey after
// removing one trailing slash ("nar/" is fine, "nar//" is not).
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	trimmed := prefix
	if trimmed[len(trimmed)-1] == '/' {
		trimmed = trimmed[:len(trimmed)-1]
	}
	if err := ValidKey(trimmed); err != nil {
		return fmt.Errorf("prefix %q: %w", prefix, err)
	}
	return nil
}

func keyByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c == '.', c == '_', c == '+', c == '-':
		return true
	}
	return false
}

// Put writes r's content under key: Create, copy, Commit, and Abort on any
// error so that a failed Put leaves nothing behind. ctx is checked between
// chunks, so a cancelled Put of a long stream stops early.
func Put(ctx context.Context, s Store, key string, r io.Reader) error {
	o, err := Write(ctx, s, key, r) // checks the key before any copy
	if err != nil {
		return err
	}
	defer o.Pending.Abort()
	if err := o.Pending.Commit(ctx, key); err != nil {
		return fmt.Errorf("store: put %s: %w", key, err)
	}
	return nil
}

// ReadAll returns the content of a small object such as a narinfo. It fails
// with ErrTooLarge instead of reading more than limit bytes, so a corrupt or
// hostile object cannot exhaust memory.
func ReadAll(ctx context.Context, s Store, key string, limit int64) ([]byte, error) {
	if limit < 0 {
		return nil, fmt.Errorf("store: read %s: negative limit %d", key, limit)
	}
	rc, err := s.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	lr := io.LimitReader(ctxReader{ctx: ctx, r: rc}, limit+1)
	b, err := io.ReadAll(lr)
	if err != nil {
		return nil, fmt.Errorf("store: read %s: %w", key, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrTooLarge, key, limit)
	}
	return b, nil
}

// copyTo copies r to p, checking ctx between chunks. An in-memory reader
// (bytes.Reader, strings.Reader: every narinfo and sidecar) writes itself
// in one call, without the 32 KiB buffer io.Copy would allocate for each
// object.
func copyTo(ctx context.Context, p Pending, r io.Reader) error {
	if wt, ok := r.(io.WriterTo); ok {
		if err := ctx.Err(); err != nil {
			return err
		}
		_, err := wt.WriteTo(p)
		return err
	}
	_, err := io.Copy(p, ctxReader{ctx: ctx, r: r})
	return err
}

// ctxReader stops a copy once ctx is done; io.Copy has no ctx of its own.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
