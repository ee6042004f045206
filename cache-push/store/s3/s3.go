// Package s3 is a store.Store in an S3 bucket (AWS S3, MinIO, versitygw,
// Garage, ...) through minio-go, so a Nix binary cache can be served from a
// bucket (`s3://bucket?endpoint=...` for nix, or any HTTP front).
//
// Layout: the object under key K is stored as Prefix+K, so several tenants
// can share a bucket, each under its own cache root.
//
// Writes: an object of up to smallObject bytes (narinfos, sidecars, most
// NARs) is held in memory and put under Prefix+key by Commit, in one PUT,
// which S3 makes visible whole or not at all. A larger one streams, from
// its first byte past that, as a multipart upload to a temporary object
// Prefix+".tmp/<random>"; Commit completes it and copies it server-side to
// Prefix+key (a single atomic CopyObject up to 5 GiB, a multipart copy
// above), then deletes the temporary object. S3 makes an object visible only
// when its upload completes, so an aborted, failed or crashed upload never
// appears under a cache key. A temporary object or incomplete multipart
// upload left by a crash is invisible to Open, Stat and List (keys never
// start with a dot) but takes space: RemoveStale deletes old ones, and a
// bucket lifecycle rule (AbortIncompleteMultipartUpload plus expiry of
// ".tmp/") is the belt to its braces. A long-running writer calls Start,
// and the store runs RemoveStale periodically in a goroutine it owns
// until Close.
//
// Memory: a Pending holds what it was given up to smallObject, then one
// part (Options.PartSize, 16 MiB by default) whatever the object's size.
package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// DefaultPartSize is the multipart part size, and so the memory a Pending
// holds; with S3's 10,000 parts it bounds objects at ~160 GiB.
const DefaultPartSize = 16 << 20

// minPartSize is S3's smallest part other than the last.
const minPartSize = 5 << 20

// smallObject is the most a Pending holds in memory before it starts a
// multipart upload: a cache entry's narinfo and provenance are a few KiB,
// and each streamed object holds a whole part (16 MiB) for as long as it
// is open, and costs an upload, a copy and a delete where one PUT does.
const smallObject = 1 << 20

// tmpDir holds uploads until Commit, under the store's prefix. ValidKey
// rejects keys starting with a dot, so it never collides with a cache key.
const tmpDir = ".tmp/"

// DefaultStaleEvery and DefaultStaleAge: how often Start's sweeper looks
// for abandoned uploads, and how old one must be to go (well above the
// longest upload).
const (
	DefaultStaleEvery = time.Hour
	DefaultStaleAge   = 24 * time.Hour
)

// Options configure a Store. Endpoint, Bucket and credentials are required.
type Options struct {
	// Endpoint is host[:port] without a scheme ("s3.eu-central-1.amazonaws.com",
	// "127.0.0.1:7070").
	Endpoint string
	// Region is the bucket's region; empty lets minio-go look it up.
	Region string
	Bucket string
	// Prefix is the cache root inside the bucket: "" or a valid key prefix
	// such as "tenants/acme"; a trailing slash is added when missing.
	Prefix string
	// AccessKey and SecretKey are static credentials; SessionToken is
	// optional. Credentials, when set, is used instead of them (IAM, env).
	AccessKey    string
	SecretKey    string
	SessionToken string
	Credentials  *credentials.Credentials
	// InsecureHTTPUnsafe talks plain HTTP: credentials are signed, not
	// sent, but the cache's bytes cross the network in clear. For tests and
	// loopback only.
	InsecureHTTPUnsafe bool
	// TLSConfig customizes HTTPS (for example a private CA); nil uses the
	// system roots.
	TLSConfig *tls.Config
	// PartSize is the multipart part size in bytes (at least 5 MiB);
	// 0 means DefaultPartSize.
	PartSize uint64
	// StaleEvery and StaleAge schedule the sweeper Start runs: every
	// StaleEvery (DefaultStaleEvery when 0) it removes the abandoned
	// uploads older than StaleAge (DefaultStaleAge when 0).
	StaleEvery time.Duration
	StaleAge   time.Duration
	// Logger hears of the sweeper's failures; nil discards them.
	Logger *slog.Logger
}

// Store is a store.Store in an S3 bucket.
type Store struct {
	client   *minio.Client
	bucket   string
	prefix   string
	partSize uint64

	staleEvery, staleAge time.Duration
	log                  *slog.Logger

	// The sweeper, while started (see Start).
	mu        sync.Mutex
	sweepStop context.CancelFunc
	sweepDone chan struct{}
}

var _ store.Store = (*Store)(nil)

// New validates opts and returns a Store. It does not contact the server;
// use Check for that.
func New(opts Options) (*Store, error) {
	var errs []error
	if opts.Endpoint == "" {
		errs = append(errs, errors.New("endpoint is empty"))
	} else if strings.Contains(opts.Endpoint, "://") {
		errs = append(errs, fmt.Errorf("endpoint %q: give host[:port] without a scheme (InsecureHTTPUnsafe selects http)", opts.Endpoint))
	}
	if opts.Bucket == "" {
		errs = append(errs, errors.New("bucket is empty"))
	}
	prefix := opts.Prefix
	if prefix != "" {
		if err := store.ValidPrefix(prefix); err != nil {
			errs = append(errs, fmt.Errorf("prefix: %w", err))
		}
		if !strings.HasSuffix(prefix, "/") {
			prefix += "/"
		}
	}
	creds := opts.Credentials
	if creds == nil {
		if opts.AccessKey == "" || opts.SecretKey == "" {
			errs = append(errs, errors.New("no credentials: set AccessKey and SecretKey, or Credentials"))
		}
		creds = credentials.NewStaticV4(opts.AccessKey, opts.SecretKey, opts.SessionToken)
	}
	partSize := opts.PartSize
	if partSize == 0 {
		partSize = DefaultPartSize
	} else if partSize < minPartSize {
		errs = append(errs, fmt.Errorf("part size %d is below S3's minimum of %d", partSize, minPartSize))
	}
	if opts.StaleEvery < 0 || opts.StaleAge < 0 {
		errs = append(errs, errors.New("negative stale upload schedule"))
	}
	if opts.InsecureHTTPUnsafe && opts.TLSConfig != nil {
		errs = append(errs, errors.New("TLSConfig is set but InsecureHTTPUnsafe disables TLS"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("s3 store: %w", errors.Join(errs...))
	}
	mo := &minio.Options{
		Creds:  creds,
		Secure: !opts.InsecureHTTPUnsafe,
		Region: opts.Region,
	}
	if opts.TLSConfig != nil {
		tr, err := minio.DefaultTransport(true)
		if err != nil {
			return nil, fmt.Errorf("s3 store: %w", err)
		}
		tr.TLSClientConfig = opts.TLSConfig.Clone()
		mo.Transport = tr
	}
	client, err := minio.New(opts.Endpoint, mo)
	if err != nil {
		return nil, fmt.Errorf("s3 store: %w", err)
	}
	st := &Store{client: client, bucket: opts.Bucket, prefix: prefix, partSize: partSize,
		staleEvery: opts.StaleEvery, staleAge: opts.StaleAge, log: opts.Logger}
	if st.staleEvery == 0 {
		st.staleEvery = DefaultStaleEvery
	}
	if st.staleAge == 0 {
		st.staleAge = DefaultStaleAge
	}
	if st.log == nil {
		st.log = slog.New(slog.DiscardHandler)
	}
	return st, nil
}

// Check verifies that the bucket exists and the credentials reach it.
func (s *Store) Check(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return s.wrap(ctx, "check bucket", s.bucket, err)
	}
	if !ok {
		return fmt.Errorf("s3 store: bucket %q does not exist", s.bucket)
	}
	return nil
}

// Create starts an object. Its upload (of an object larger than
// smallObject) runs under ctx: cancelling it fails the Pending, like a
// crash of the writer.
func (s *Store) Create(ctx context.Context) (store.Pending, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("s3 store: create: %w", err)
	}
	return &pending{s: s, ctx: ctx}, nil
}

// stream starts the multipart upload to a temporary object and writes to
// it what p holds so far.
func (p *pending) stream() error {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("temporary name: %w", err)
	}
	s := p.s
	upCtx, cancel := context.WithCancel(p.ctx)
	pr, pw := io.Pipe()
	p.tmp = s.prefix + tmpDir + time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(id[:])
	p.pw, p.cancel, p.done = pw, cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		_, err := s.client.PutObject(upCtx, s.bucket, p.tmp, pr, -1, minio.PutObjectOptions{
			PartSize:    s.partSize,
			ContentType: "application/octet-stream",
		})
		p.upErr = err
		// Unblock a Write waiting on a failed upload.
		pr.CloseWithError(errOrClosed(err))
	}()
	head := p.head
	p.head = nil
	if len(head) == 0 {
		return nil
	}
	_, err := pw.Write(head)
	return err
}

func errOrClosed(err error) error {
	if err != nil {
		return err
	}
	return io.ErrClosedPipe
}

type pending struct {
	s   *Store
	ctx context.Context // Create's
	// head is what was written while it fits in smallObject; once more
	// comes, stream starts the upload below and head goes to it.
	head []byte
	// The upload, once streaming: pw is nil before.
	tmp    string
	pw     *io.PipeWriter
	cancel context.CancelFunc
	done   chan struct{}
	upErr  error // set before done is closed

	finished bool
	writeErr error
	once     sync.Once
}

func (p *pending) Write(b []byte) (int, error) {
	if p.finished {
		return 0, store.ErrFinished
	}
	if p.writeErr != nil {
		return 0, p.writeErr
	}
	if p.pw == nil {
		if err := p.ctx.Err(); err != nil {
			p.writeErr = fmt.Errorf("s3 store: upload: %w", err)
			return 0, p.writeErr
		}
		if len(p.head)+len(b) <= smallObject {
			p.head = append(p.head, b...)
			return len(b), nil
		}
		if err := p.stream(); err != nil {
			p.writeErr = fmt.Errorf("s3 store: upload: %w", err)
			return 0, p.writeErr
		}
	}
	n, err := p.pw.Write(b)
	if err != nil {
		// The upload failed (the pipe carries its error): said as a
		// failed Commit would say it, a full disk as store.ErrNoSpace.
		p.writeErr = p.s.wrap(p.ctx, "upload to", p.tmp, err)
		return n, p.writeErr
	}
	return n, nil
}

func (p *pending) Commit(ctx context.Context, key string) error {
	if p.finished {
		return store.ErrFinished
	}
	p.finished = true
	defer p.cleanup()
	if err := store.ValidKey(key); err != nil {
		return err
	}
	if p.writeErr != nil {
		return p.writeErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3 store: commit %s: %w", key, err)
	}
	if p.pw == nil {
		// Small: one PUT, of a known size, under the key. Create's ctx
		// ends it too, as it ends a streaming upload.
		if err := p.ctx.Err(); err != nil {
			return fmt.Errorf("s3 store: commit %s: upload: %w", key, err)
		}
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(p.ctx, cancel)()
		_, err := p.s.client.PutObject(pctx, p.s.bucket, p.s.prefix+key, bytes.NewReader(p.head), int64(len(p.head)),
			minio.PutObjectOptions{ContentType: "application/octet-stream"})
		if err != nil {
			return p.s.wrap(ctx, "commit: put", key, err)
		}
		return nil
	}
	// Finish the upload: EOF completes the multipart upload.
	p.pw.Close()
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("s3 store: commit %s: %w", key, ctx.Err())
	}
	if p.upErr != nil {
		return p.s.wrap(ctx, "commit: upload", key, p.upErr)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3 store: commit %s: %w", key, err)
	}
	_, err := p.s.client.ComposeObject(ctx,
		minio.CopyDestOptions{Bucket: p.s.bucket, Object: p.s.prefix + key},
		minio.CopySrcOptions{Bucket: p.s.bucket, Object: p.tmp})
	if err != nil {
		return p.s.wrap(ctx, "commit: copy", key, err)
	}
	return nil
}

func (p *pending) Abort() error {
	p.finished = true
	p.cleanup()
	return nil
}

// cleanup stops the upload and deletes the temporary object, best effort:
// RemoveStale catches what it misses.
func (p *pending) cleanup() {
	p.once.Do(func() {
		p.head = nil
		if p.pw == nil {
			return // nothing was sent
		}
		p.cancel()
		p.pw.CloseWithError(store.ErrFinished)
		<-p.done
		if p.upErr == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = p.s.client.RemoveObject(ctx, p.s.bucket, p.tmp, minio.RemoveObjectOptions{})
		}
	})
}

// Open returns the object's content. The GET is issued before Open returns,
// so a reader opened before a replacing Commit reads the old object.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, _, err := s.OpenInfo(ctx, key)
	return rc, err
}

// OpenInfo implements store.InfoOpener: the GET's response headers describe
// the object, so no separate HEAD is needed.
func (s *Store) OpenInfo(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	if err := store.ValidKey(key); err != nil {
		return nil, store.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, store.Info{}, fmt.Errorf("s3 store: open %s: %w", key, err)
	}
	rc, oi, _, err := minio.Core{Client: s.client}.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, store.Info{}, s.wrap(ctx, "open", key, err)
	}
	return rc, store.Info{Key: key, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Stat describes the object under key.
func (s *Store) Stat(ctx context.Context, key string) (store.Info, error) {
	if err := store.ValidKey(key); err != nil {
		return store.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return store.Info{}, fmt.Errorf("s3 store: stat %s: %w", key, err)
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return store.Info{}, s.wrap(ctx, "stat", key, err)
	}
	return store.Info{Key: key, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Delete removes the object under key; S3 deletes of absent objects
// succeed.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := store.ValidKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3 store: delete %s: %w", key, err)
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{}); err != nil {
		err = s.wrap(ctx, "delete", key, err)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	}
	return nil
}

// List calls fn for every committed object whose key starts with prefix,
// skipping temporary uploads.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	if err := store.ValidPrefix(prefix); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3 store: list %q: %w", prefix, err)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.client.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true})
	var fnErr, listErr error
	for oi := range ch {
		if fnErr != nil || listErr != nil {
			continue // drain after cancel so the lister goroutine ends
		}
		if oi.Err != nil {
			listErr = oi.Err
			cancel()
			continue
		}
		key := strings.TrimPrefix(oi.Key, s.prefix)
		if store.ValidKey(key) != nil {
			continue // ".tmp/..." or a foreign object
		}
		if err := fn(store.Info{Key: key, Size: oi.Size, ModTime: oi.LastModified}); err != nil {
			fnErr = err
			cancel()
		}
	}
	if fnErr != nil {
		return fnErr
	}
	if listErr != nil {
		return s.wrap(ctx, "list", prefix, listErr)
	}
	return nil
}

// RemoveStale deletes temporary uploads older than age, left by writers
// that crashed between Create and Commit, and aborts incomplete multipart
// uploads under the temporary directory. Run it with an age well above the
// longest upload.
func (s *Store) RemoveStale(ctx context.Context, age time.Duration) error {
	cutoff := time.Now().Add(-age)
	tmp := s.prefix + tmpDir
	for oi := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: tmp, Recursive: true}) {
		if oi.Err != nil {
			return s.wrap(ctx, "remove stale", tmpDir, oi.Err)
		}
		if oi.LastModified.Before(cutoff) {
			if err := s.client.RemoveObject(ctx, s.bucket, oi.Key, minio.RemoveObjectOptions{}); err != nil {
				return s.wrap(ctx, "remove stale", oi.Key, err)
			}
		}
	}
	for u := range s.client.ListIncompleteUploads(ctx, s.bucket, tmp, true) {
		if u.Err != nil {
			return s.wrap(ctx, "remove stale uploads", tmpDir, u.Err)
		}
		if u.Initiated.Before(cutoff) {
			if err := s.client.RemoveIncompleteUpload(ctx, s.bucket, u.Key); err != nil {
				return s.wrap(ctx, "remove stale uploads", u.Key, err)
			}
		}
	}
	return nil
}

// Start runs RemoveStale (Options.StaleAge) now and every
// Options.StaleEvery, in a goroutine the store owns, until Close. A
// writer that runs for long (a pusher) starts it; a store opened to read
// or for one collection does not. Starting twice is an error.
func (s *Store) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sweepDone != nil {
		return errors.New("s3 store: sweeper already started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.sweepStop, s.sweepDone = cancel, make(chan struct{})
	go s.sweep(ctx, s.sweepDone)
	return nil
}

// sweep is Start's loop; it closes done when ctx ends.
func (s *Store) sweep(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(s.staleEvery)
	defer t.Stop()
	for {
		if err := s.RemoveStale(ctx, s.staleAge); err != nil && ctx.Err() == nil {
			s.log.Warn("s3 cache: remove stale uploads", "bucket", s.bucket, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close stops the sweeper Start started, cancelling a sweep in progress,
// and waits for it to end. Without Start it does nothing; the store
// stays usable for reads and writes either way.
func (s *Store) Close() error {
	s.mu.Lock()
	stop, done := s.sweepStop, s.sweepDone
	s.sweepStop, s.sweepDone = nil, nil
	s.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	return nil
}

// wrap maps S3 errors onto the store's: a missing object to ErrNotFound,
// a done ctx to its error; everything else stays an I/O failure.
func (s *Store) wrap(ctx context.Context, op, key string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("s3 store: %s %s: %w (%w)", op, key, cerr, err)
	}
	resp := minio.ToErrorResponse(err)
	if resp.Code == "NoSuchKey" || (resp.StatusCode == http.StatusNotFound && resp.Code != "NoSuchBucket") {
		return fmt.Errorf("%w: %s (%w)", store.ErrNotFound, key, err)
	}
	// 507 Insufficient Storage: the server's disk or quota is full
	// (versitygw says InsufficientStorage, MinIO XMinioStorageFull).
	if resp.StatusCode == http.StatusInsufficientStorage || resp.Code == "InsufficientStorage" || resp.Code == "XMinioStorageFull" {
		return fmt.Errorf("%w in bucket %s: s3 store: %s %s: %w", store.ErrNoSpace, s.bucket, op, key, err)
	}
	return fmt.Errorf("s3 store: %s %s: %w", op, key, err)
}
