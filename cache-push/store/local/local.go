// Package local implements store.Store on a local directory.
//
// Objects are plain files under the directory, named by their keys, so the
// directory can also be served by any static web server. Writes go to a
// temporary file in the ".tmp" subdirectory (the same filesystem, so the
// final rename is atomic), which is fsynced, renamed into place, and then the
// parent directory is fsynced so that the rename itself survives a crash.
// Commits running at the same time share these flushes (group commit, see
// batch.go).
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
)

const (
	// tmpDir holds pending objects. store.ValidKey rejects segments that
	// start with a dot, so no key can reach into it.
	tmpDir = ".tmp"
	// tmpPrefix marks files that New may delete as crash leftovers.
	tmpPrefix = "pending-"
	// StaleAfter is how long a temporary file must have gone unmodified
	// before New deletes it. A live writer touches its file with every
	// Write, so only files of crashed or stuck writers are that old, even
	// when several processes share the directory.
	StaleAfter = time.Hour
)

var (
	_ store.Store          = (*Store)(nil)
	_ store.GroupCommitter = (*Store)(nil)
)

// Store is a directory-backed store.Store.
type Store struct {
	dir   string   // absolute, cleaned
	tmp   string   // dir/.tmp
	batch *batcher // nil: every Commit makes its files and directories durable itself
	// opened numbers the temporary files in the order Create opened
	// them (flushFS syncs through the oldest of a round).
	opened atomic.Uint64
	// dirs holds the key directories (such as "nar") mkdirs made or
	// found, so that a commit does not ask for them again; the store
	// never removes a directory, and a rename into one someone else
	// removed makes it again (renameStage).
	dirs sync.Map
	// lateWriteback leaves the writes of a commit's files to its flush
	// (startWriteback), for BenchmarkEntries.
	lateWriteback bool
}

// Option configures a Store.
type Option func(*Store)

// WithoutGroupCommit makes every Commit fsync its files and directories
// on its own instead of sharing the flushes with the Commits running at
// the same time (see batch.go): as durable, with more flushes. For
// benchmarks that measure what group commit buys.
func WithoutGroupCommit() Option {
	return func(s *Store) { s.batch = nil }
}

// WithFilesystemFlush makes each round of group commit (batch.go) flush
// with one syncfs of the cache's filesystem instead of an fsync of each
// file and directory: fewer system calls and less CPU, and on a
// filesystem the cache has to itself, faster (BenchmarkEntries). But
// syncfs also writes back, and waits for, every other dirty file of the
// filesystem: on one shared with builds it was slower. Linux only; the
// default elsewhere.
func WithFilesystemFlush() Option {
	return withBatch(fsFlush)
}

// withBatch commits by rounds (batch.go) whose flush is flush. For
// BenchmarkEntries, which compares ways of flushing.
func withBatch(flush func([]*item, []string) ([]error, []error)) Option {
	return func(s *Store) { s.batch = &batcher{flush: flush} }
}

// withLateWriteback makes commits start no writeback of their own
// (startWriteback): for BenchmarkEntries, which measures what it buys.
func withLateWriteback() Option {
	return func(s *Store) { s.lateWriteback = true }
}

// New opens the store rooted at dir, creating dir (0755) if needed, and
// removes temporary files left over by crashed writers (see StaleAfter).
func New(dir string, opts ...Option) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local store %s: %w", dir, err)
	}
	s := &Store{dir: abs, tmp: filepath.Join(abs, tmpDir)}
	s.batch = &batcher{flush: flushEach}
	for _, o := range opts {
		o(s)
	}
	if err := os.MkdirAll(s.tmp, 0o755); err != nil {
		return nil, fmt.Errorf("local store %s: %w", dir, s.noSpace(err))
	}
	if err := s.removeStale(time.Now().Add(-StaleAfter)); err != nil {
		return nil, fmt.Errorf("local store %s: removing stale temporary files: %w", dir, err)
	}
	return s, nil
}

// Dir returns the absolute directory the store is rooted at.
func (s *Store) Dir() string { return s.dir }

func (s *Store) removeStale(before time.Time) error {
	entries, err := os.ReadDir(s.tmp)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tmpPrefix) || !e.Type().IsRegular() {
			continue // not ours: leave it for a human
		}
		fi, err := e.Info()
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if fi.ModTime().Before(before) {
			if err := os.Remove(filepath.Join(s.tmp, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// noSpace marks err with store.ErrNoSpace when the filesystem is full (no
// blocks or no inodes left, or a quota exhausted), naming the directory and
// what is left there, so the operator knows what to free. Other errors pass
// through unchanged.
func (s *Store) noSpace(err error) error {
	if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EDQUOT) {
		return err
	}
	return fmt.Errorf("%w in %s (%s): %w", store.ErrNoSpace, s.dir, freeSpace(s.dir), err)
}

// filename maps a key to its file after validating it.
func (s *Store) filename(key string) (string, error) {
	if err := store.ValidKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, filepath.FromSlash(key)), nil
}

// notFound turns the errors of a missing file into store.ErrNotFound.
// ENOTDIR shows up when a prefix of the key is a file ("a" exists, "a/b" is
// asked for), which also means "no such object".
func notFound(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return missing{key}
	}
	return fmt.Errorf("local store: %s: %w", key, err)
}

// missing is fmt.Errorf("%w: %s", store.ErrNotFound, key) without the
// formatting: the pusher looks for several objects that are not there
// yet per entry it writes.
type missing struct{ key string }

func (m missing) Error() string { return store.ErrNotFound.Error() + ": " + m.key }
func (m missing) Unwrap() error { return store.ErrNotFound }

// Create implements store.Store.
func (s *Store) Create(ctx context.Context) (store.Pending, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var rnd [12]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("local store: create: %w", err)
	}
	// By its descriptor (file), as in openRead: os.OpenFile's attempt to
	// register a regular file with the network poller costs three system
	// calls per object for nothing.
	f, err := createFile(filepath.Join(s.tmp, tmpPrefix+hex.EncodeToString(rnd[:])))
	if err != nil {
		return nil, fmt.Errorf("local store: create: %w", s.noSpace(err))
	}
	return &pending{s: s, f: f, seq: s.opened.Add(1)}, nil
}

// Open implements store.Store.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	f, _, err := s.OpenInfo(ctx, key)
	return f, err
}

// OpenInfo implements store.InfoOpener with one open and one fstat.
func (s *Store) OpenInfo(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	name, err := s.filename(key)
	if err != nil {
		return nil, store.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, store.Info{}, err
	}
	if err := s.noLinkedDirs(key); err != nil {
		return nil, store.Info{}, err
	}
	f, err := openRead(name)
	if errors.Is(err, syscall.ELOOP) {
		return nil, store.Info{}, fmt.Errorf("%w: %s (a symbolic link, not served)", store.ErrNotFound, key)
	}
	if err != nil {
		return nil, store.Info{}, notFound(key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, store.Info{}, fmt.Errorf("local store: %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close() // a directory such as "nar" is not an object
		return nil, store.Info{}, missing{key}
	}
	return f, store.Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// openRead opens name read-only without os.Open's attempt to register the
// descriptor with the network poller: on Linux that attempt costs three
// more system calls per open (fcntl, a failing epoll_ctl, fcntl) and buys
// nothing for a regular file. The cache server opens a file per request.
func openRead(name string) (*os.File, error) {
	// O_NOFOLLOW: the store holds regular files only; a symbolic link
	// someone placed in the cache directory (to /etc/shadow, to a key) is
	// not an object, and the server must not follow it.
	fd, err := syscall.Open(name, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// Stat implements store.Store.
func (s *Store) Stat(ctx context.Context, key string) (store.Info, error) {
	name, err := s.filename(key)
	if err != nil {
		return store.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return store.Info{}, err
	}
	if err := s.noLinkedDirs(key); err != nil {
		return store.Info{}, err
	}
	fi, err := os.Lstat(name)
	if err != nil {
		return store.Info{}, notFound(key, err)
	}
	if !fi.Mode().IsRegular() {
		return store.Info{}, missing{key}
	}
	return store.Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// noLinkedDirs refuses a key whose directories (such as "nar") include a
// symbolic link: O_NOFOLLOW guards only the last component. Keys without
// a directory, every narinfo, cost nothing here.
func (s *Store) noLinkedDirs(key string) error {
	dir := path.Dir(key)
	for dir != "." && dir != "/" {
		fi, err := os.Lstat(filepath.Join(s.dir, filepath.FromSlash(dir)))
		if err != nil {
			return notFound(key, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: %s (%s is not a directory)", store.ErrNotFound, key, dir)
		}
		dir = path.Dir(dir)
	}
	return nil
}

// Delete implements store.Store. Emptied directories are left in place: they
// cost little, and removing them would race with a concurrent Commit that
// needs them.
func (s *Store) Delete(ctx context.Context, key string) error {
	name, err := s.filename(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := os.Lstat(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil
		}
		return fmt.Errorf("local store: delete %s: %w", key, err)
	}
	if fi.IsDir() {
		return nil // not an object, so there is nothing to delete
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local store: delete %s: %w", key, err)
	}
	// Make the removal durable, like a Commit: a resurrected object after a
	// crash would surprise a garbage collector.
	if err := syncDir(filepath.Dir(name)); err != nil {
		return fmt.Errorf("local store: delete %s: %w", key, err)
	}
	return nil
}

// List implements store.Store. It walks only the directory named by the part
// of prefix up to its last slash, and reports regular files whose names are
// valid keys; anything else (the ".tmp" directory, stray files) is skipped.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	if err := store.ValidPrefix(prefix); err != nil {
		return err
	}
	start := s.dir
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = filepath.Join(s.dir, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(name string, d fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return nil // vanished under us, or the prefix names no directory
			}
			return err
		}
		rel, err := filepath.Rel(s.dir, name)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if name == start {
				return nil
			}
			if strings.HasPrefix(d.Name(), ".") || !prefixMayMatch(key+"/", prefix) {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(key, prefix) || store.ValidKey(key) != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted since the directory was read
			}
			return err
		}
		return fn(store.Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	return err
}

// prefixMayMatch reports whether keys under directory dir (ending in "/")
// can start with prefix.
func prefixMayMatch(dir, prefix string) bool {
	return strings.HasPrefix(dir, prefix) || strings.HasPrefix(prefix, dir)
}

// pending is a temporary file waiting for Commit or Abort.
type pending struct {
	s        *Store
	f        *file  // nil once finished
	seq      uint64 // when f was opened (Store.opened)
	writeErr error  // first Write failure; Commit refuses to publish after it
	size     int64  // bytes written
}

func (p *pending) Write(b []byte) (int, error) {
	if p.f == nil {
		return 0, store.ErrFinished
	}
	if p.writeErr != nil {
		return 0, p.writeErr
	}
	n, err := p.f.Write(b)
	p.size += int64(n)
	if err != nil {
		p.writeErr = fmt.Errorf("local store: write: %w", p.s.noSpace(err))
		return n, p.writeErr
	}
	return n, nil
}

func (p *pending) Commit(ctx context.Context, key string) error {
	it, err := p.take(key)
	if err == nil {
		err = ctx.Err()
		if err != nil {
			err = fmt.Errorf("local store: commit %s: %w", key, err)
		}
	}
	r := &request{ctx: ctx}
	if it != nil {
		r.stages = [][]*item{{it}}
	}
	if err != nil {
		r.fail(err)
		return err
	}
	return p.s.commitRequest(r)
}

// take finishes p for a commit under key: whatever happens next, p is
// finished, and a failed commit removes its temporary file.
func (p *pending) take(key string) (*item, error) {
	if p.f == nil {
		return nil, fmt.Errorf("commit %s: %w", key, store.ErrFinished)
	}
	it := &item{f: p.f, tmp: p.f.Name(), key: key, seq: p.seq, size: p.size}
	p.f = nil
	name, err := p.s.filename(key)
	if err != nil {
		return it, err
	}
	it.name = name
	if p.writeErr != nil {
		return it, fmt.Errorf("local store: commit %s: earlier write failed: %w", key, p.writeErr)
	}
	return it, nil
}

func (p *pending) Abort() error {
	if p.f == nil {
		return nil
	}
	f := p.f
	p.f = nil
	cerr := f.Close()
	if err := os.Remove(f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local store: abort: %w", err)
	}
	if cerr != nil && !errors.Is(cerr, fs.ErrClosed) {
		return fmt.Errorf("local store: abort: %w", cerr)
	}
	return nil
}

// mkdirs creates the directories of keyDir (a slash-separated key directory,
// "." for the root), each made durable in its parent, and remembers it.
func (s *Store) mkdirs(keyDir string) error {
	if keyDir == "." {
		return nil
	}
	if _, ok := s.dirs.Load(keyDir); ok {
		return nil
	}
	cur := s.dir
	for _, seg := range strings.Split(keyDir, "/") {
		next := filepath.Join(cur, seg)
		err := os.Mkdir(next, 0o755)
		switch {
		case err == nil:
			// The new entry is made durable here, before keyDir is
			// remembered: a commit that fails after this call would not
			// sync cur, and later ones would find keyDir remembered.
			// Directories are made rarely.
			if err := syncDir(cur); err != nil {
				return err
			}
		case errors.Is(err, fs.ErrExist):
			// Already there (or made by a concurrent Commit, which syncs
			// its own parents); a file in the way fails at the rename.
		default:
			return err
		}
		cur = next
	}
	s.dirs.Store(keyDir, struct{}{})
	return nil
}
