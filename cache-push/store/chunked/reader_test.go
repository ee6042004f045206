package chunked_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/chunked"
	"codeberg.org/provenix/provenix/internal/tests3"
)

// TestDamagedChunkS3: a chunk fetched into memory (from S3) whose bytes
// were changed, its length kept, fails the read with ErrCorrupt where it
// starts; what came before is the NAR file's beginning.
func TestDamagedChunkS3(t *testing.T) {
	srv := tests3.Start(t)
	s := wrap(t, newS3(t, srv, "p"), chunked.Options{})
	res := ingestNAR(t, s, version(2<<20, nil))
	file, err := store.ReadAll(t.Context(), s, res.URL, 64<<20)
	if err != nil || uint64(len(file)) != res.FileSize {
		t.Fatalf("undamaged read: %d bytes, %v", len(file), err)
	}
	var chunks []string
	filepath.WalkDir(filepath.Join(srv.Dir, srv.Bucket, "p", "chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			chunks = append(chunks, p)
		}
		return nil
	})
	if len(chunks) < 2 {
		t.Fatalf("%d chunks", len(chunks))
	}
	b, err := os.ReadFile(chunks[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(chunks[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Open(t.Context(), res.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if !errors.Is(err, chunked.ErrCorrupt) {
		t.Errorf("read with a changed chunk: %d bytes, %v; want ErrCorrupt", len(got), err)
	}
	if !bytes.HasPrefix(file, got) || len(got) >= len(file) {
		t.Errorf("served %d bytes that are not the beginning of the %d-byte file", len(got), len(file))
	}
}

// countingStore hands out chunks as plain readers (not files, as S3
// does), each open after a delay, and counts how many are open at once.
type countingStore struct {
	store.Store
	mu         sync.Mutex
	open, peak int
	opens      int
}

func (c *countingStore) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	c.mu.Lock()
	c.open++
	c.opens++
	c.peak = max(c.peak, c.open)
	c.mu.Unlock()
	time.Sleep(2 * time.Millisecond) // a round trip
	b, err := store.ReadAll(ctx, c.Store, key, 64<<20)
	if err != nil {
		c.closed()
		return nil, err
	}
	return &countedReader{Reader: bytes.NewReader(b), c: c}, nil
}

func (c *countingStore) closed() {
	c.mu.Lock()
	c.open--
	c.mu.Unlock()
}

func (c *countingStore) counts() (open, peak, opens int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open, c.peak, c.opens
}

type countedReader struct {
	io.Reader
	c    *countingStore
	once sync.Once
}

func (r *countedReader) Close() error {
	r.once.Do(r.c.closed)
	return nil
}

// TestReadAhead: a reader fetches several chunks at once, never more
// than its bound, and neither far ahead of what it hands out nor after
// Close; a reader that was never read fetches nothing.
func TestReadAhead(t *testing.T) {
	cs := &countingStore{Store: newLocal(t)}
	s := wrap(t, newLocal(t), chunked.Options{Chunks: cs})
	nar := version(16<<20, nil)
	res := ingestNAR(t, s, nar)
	file, err := store.ReadAll(t.Context(), s, res.URL, 64<<20)
	if err != nil || uint64(len(file)) != res.FileSize {
		t.Fatalf("read: %d bytes, %v", len(file), err)
	}
	open, peak, all := cs.counts()
	t.Logf("%d chunks, at most %d fetched at once", all, peak)
	if open != 0 || peak < 2 || peak > 8 || all < 100 {
		t.Errorf("%d chunks, %d fetched at once at most, %d still open after the read; want 2 to 8, none", all, peak, open)
	}

	idle, err := s.Open(t.Context(), res.URL)
	if err != nil {
		t.Fatal(err)
	}
	idle.Close()
	if _, _, n := cs.counts(); n != all {
		t.Errorf("an unread reader fetched %d chunks", n-all)
	}

	rc, err := s.Open(t.Context(), res.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // time to fetch all 100, were it unbounded
	rc.Close()
	if open, _, n := cs.counts(); open != 0 || n-all > 64+8 {
		t.Errorf("a reader that handed out 1000 bytes fetched %d chunks, %d still open after Close; want at most 72, none", n-all, open)
	}
}

// TestReadCancelled: a reader whose ctx ends mid-NAR fails; it never
// ends early as if the NAR were complete, even when the chunks fetched
// ahead before the end are all it has left to hand out. Chunk files
// (opened one at a time) and chunks fetched ahead (not files).
func TestReadCancelled(t *testing.T) {
	for name, chunks := range map[string]store.Store{"files": nil, "ahead": &countingStore{Store: newLocal(t)}} {
		t.Run(name, func(t *testing.T) {
			s := wrap(t, newLocal(t), chunked.Options{Chunks: chunks})
			res := ingestNAR(t, s, version(16<<20, nil))
			ctx, cancel := context.WithCancel(t.Context())
			rc, err := s.Open(ctx, res.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond) // the read-ahead fills up and waits
			cancel()
			n, err := io.Copy(io.Discard, rc)
			if !errors.Is(err, context.Canceled) || uint64(n)+1000 >= res.FileSize {
				t.Errorf("read after cancel: %d more bytes of %d, %v; want context.Canceled before the end", n, res.FileSize, err)
			}
		})
	}
}
