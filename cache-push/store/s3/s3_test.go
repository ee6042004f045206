package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/storetest"
	"codeberg.org/provenix/provenix/internal/tests3"
)

func newStore(t *testing.T, srv *tests3.Server, prefix string, partSize uint64) *Store {
	t.Helper()
	s, err := New(Options{
		Endpoint:           srv.Endpoint,
		Region:             tests3.Region,
		Bucket:             srv.Bucket,
		Prefix:             prefix,
		AccessKey:          tests3.AccessKey,
		SecretKey:          tests3.SecretKey,
		InsecureHTTPUnsafe: true,
		PartSize:           partSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	srv := tests3.Start(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		// One server, an empty tenant root per subtest.
		return newStore(t, srv, fmt.Sprintf("tenants/t%d", n.Add(1)), 0)
	})
}

// bucketContents lists everything in the bucket, temporary objects and
// incomplete multipart uploads included, bypassing the store.
func bucketContents(t *testing.T, s *Store) (objects, uploads []string) {
	t.Helper()
	for oi := range s.client.ListObjects(t.Context(), s.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if oi.Err != nil {
			t.Fatal(oi.Err)
		}
		objects = append(objects, oi.Key)
	}
	for u := range s.client.ListIncompleteUploads(t.Context(), s.bucket, "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		uploads = append(uploads, u.Key)
	}
	return objects, uploads
}

func wantAbsent(t *testing.T, s *Store, key string) {
	t.Helper()
	if _, err := s.Stat(t.Context(), key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Stat(%q) = %v, want ErrNotFound", key, err)
	}
	var listed []string
	if err := s.List(t.Context(), "", func(fi store.Info) error { listed = append(listed, fi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 0 {
		t.Errorf("List = %v, want nothing", listed)
	}
}

// TestLargeBoundedMemory streams 64 MiB through a Pending with 5 MiB parts
// and checks that the process allocated far less than the object.
func TestLargeBoundedMemory(t *testing.T) {
	const size = 64 << 20
	srv := tests3.Start(t)
	s := newStore(t, srv, "", minPartSize)
	key := "nar/large.nar.zst"
	want := sha256.New()
	var seed [32]byte
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8(seed), size), want)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := store.Put(t.Context(), s, key, src); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("Put of %d MiB allocated %.1f MiB in total", size>>20, float64(alloc)/(1<<20))
	if alloc > size/2 {
		t.Errorf("Put allocated %d bytes for a %d-byte object; want streaming with bounded buffers", alloc, size)
	}

	rc, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := sha256.New()
	if n, err := io.Copy(got, rc); err != nil || n != size {
		t.Fatalf("read back %d bytes, %v; want %d", n, err, size)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Error("content differs")
	}
	objects, uploads := bucketContents(t, s)
	if len(objects) != 1 || objects[0] != key || len(uploads) != 0 {
		t.Errorf("bucket holds %v and uploads %v after Put, want only %s", objects, uploads, key)
	}
}

// writeParts writes n bytes, enough for the multipart upload to have sent
// parts to the server.
func writeParts(t *testing.T, p store.Pending, n int) error {
	t.Helper()
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	for written := 0; written < n; written += len(chunk) {
		if _, err := p.Write(chunk); err != nil {
			return err
		}
	}
	return nil
}

func TestAbortMidMultipart(t *testing.T) {
	srv := tests3.Start(t)
	s := newStore(t, srv, "tenant", minPartSize)
	p, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := writeParts(t, p, 12<<20); err != nil {
		t.Fatal(err)
	}
	if err := p.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(t.Context(), "k"); !errors.Is(err, store.ErrFinished) {
		t.Errorf("Commit after Abort = %v, want ErrFinished", err)
	}
	wantAbsent(t, s, "k")
	// Abort cancels the upload; minio-go aborts the multipart upload too.
	if err := s.RemoveStale(t.Context(), 0); err != nil {
		t.Fatal(err)
	}
	if objects, uploads := bucketContents(t, s); len(objects)+len(uploads) != 0 {
		t.Errorf("bucket holds %v and uploads %v after Abort, want nothing", objects, uploads)
	}
}

// TestCancelledMidMultipart cancels the Create ctx halfway through a
// multipart upload, as when the writer dies: nothing appears under the key,
// and RemoveStale clears what the dead upload left.
func TestCancelledMidMultipart(t *testing.T) {
	srv := tests3.Start(t)
	s := newStore(t, srv, "tenant", minPartSize)
	ctx, cancel := context.WithCancel(t.Context())
	p, err := s.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	if err := writeParts(t, p, 12<<20); err != nil {
		t.Fatal(err)
	}
	cancel()
	// The upload notices the cancel on its next request; keep writing
	// until the Pending fails.
	deadline := time.Now().Add(10 * time.Second)
	var werr error
	for werr == nil && time.Now().Before(deadline) {
		werr = writeParts(t, p, 1<<20)
	}
	if werr == nil {
		t.Fatal("Write kept succeeding after the upload's ctx was cancelled")
	}
	if err := p.Commit(t.Context(), "k"); err == nil {
		t.Fatal("Commit of a cancelled upload succeeded")
	}
	wantAbsent(t, s, "k")
	if err := s.RemoveStale(t.Context(), 0); err != nil {
		t.Fatal(err)
	}
	if objects, uploads := bucketContents(t, s); len(objects)+len(uploads) != 0 {
		t.Errorf("bucket holds %v and uploads %v after RemoveStale, want nothing", objects, uploads)
	}
}

// TestPrefixIsolation checks that two tenants sharing a bucket see only
// their own objects.
func TestPrefixIsolation(t *testing.T) {
	srv := tests3.Start(t)
	a := newStore(t, srv, "tenants/a", 0)
	b := newStore(t, srv, "tenants/b/", 0)
	if err := store.Put(t.Context(), a, "x.narinfo", strings.NewReader("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(t.Context(), "x.narinfo"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("tenant b sees tenant a's object: %v", err)
	}
	objects, _ := bucketContents(t, a)
	if len(objects) != 1 || objects[0] != "tenants/a/x.narinfo" {
		t.Errorf("bucket holds %v, want [tenants/a/x.narinfo]", objects)
	}
}

// TestSweeper: Start removes abandoned temporary objects periodically,
// leaves cache objects alone, refuses a second start, and Close stops it
// and waits: nothing is removed after Close returns.
func TestSweeper(t *testing.T) {
	srv := tests3.Start(t)
	s, err := New(Options{Endpoint: srv.Endpoint, Region: tests3.Region, Bucket: srv.Bucket, Prefix: "tenant",
		AccessKey: tests3.AccessKey, SecretKey: tests3.SecretKey, InsecureHTTPUnsafe: true,
		StaleEvery: 20 * time.Millisecond, StaleAge: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(t.Context(), s, "x.narinfo", strings.NewReader("kept")); err != nil {
		t.Fatal(err)
	}
	leave := func(name string) {
		t.Helper()
		if _, err := s.client.PutObject(t.Context(), s.bucket, s.prefix+tmpDir+name, strings.NewReader("abandoned"), int64(len("abandoned")), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		t.Error("a second Start succeeded")
	}
	leave("early")
	deadline := time.Now().Add(10 * time.Second)
	for {
		objects, _ := bucketContents(t, s)
		if len(objects) == 1 && objects[0] == "tenant/x.narinfo" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bucket holds %v 10s after Start, want only tenant/x.narinfo", objects)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	leave("late")
	time.Sleep(100 * time.Millisecond) // five sweeps' worth, were it running
	if objects, _ := bucketContents(t, s); len(objects) != 2 {
		t.Errorf("bucket holds %v after Close, want the cache object and the late leftover", objects)
	}
}

func TestNewValidates(t *testing.T) {
	for name, o := range map[string]Options{
		"no endpoint": {Bucket: "b", AccessKey: "a", SecretKey: "s"},
		"scheme":      {Endpoint: "http://h", Bucket: "b", AccessKey: "a", SecretKey: "s"},
		"no bucket":   {Endpoint: "h", AccessKey: "a", SecretKey: "s"},
		"no creds":    {Endpoint: "h", Bucket: "b"},
		"bad prefix":  {Endpoint: "h", Bucket: "b", AccessKey: "a", SecretKey: "s", Prefix: "../x"},
		"small parts": {Endpoint: "h", Bucket: "b", AccessKey: "a", SecretKey: "s", PartSize: 1 << 20},
		"stale age":   {Endpoint: "h", Bucket: "b", AccessKey: "a", SecretKey: "s", StaleAge: -time.Hour},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: New(%+v) succeeded", name, o)
		}
	}
}

// TestSmallObjectOnePut: an object of up to smallObject bytes is put in one
// request, without the multipart upload's part buffer (16 MiB for every
// narinfo and sidecar before) or a temporary object; one a byte past it
// streams, what was held first included.
func TestSmallObjectOnePut(t *testing.T) {
	srv := tests3.Start(t)
	s := newStore(t, srv, "tenant", DefaultPartSize)
	small := bytes.Repeat([]byte("n"), 4<<10)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := store.Put(t.Context(), s, "x.narinfo", bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
		t.Errorf("a %d-byte object allocated %d bytes", len(small), n)
	}
	if objects, uploads := bucketContents(t, s); len(objects) != 1 || len(uploads) != 0 {
		t.Errorf("bucket holds %v and uploads %v, want the object alone", objects, uploads)
	}

	// Across the limit, in writes that straddle it.
	big := make([]byte, smallObject+10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	p, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range [][]byte{big[:smallObject-5], big[smallObject-5:]} {
		if _, err := p.Write(part); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Commit(t.Context(), "nar/big.nar"); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string][]byte{"x.narinfo": small, "nar/big.nar": big} {
		got, err := store.ReadAll(t.Context(), s, key, 2*smallObject)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, %v; want the %d written", key, len(got), err, len(want))
		}
	}
}

// TestSmallObjectCancelAbort: an object still held in memory follows the
// Pending rules: Create's ctx cancelled fails it and leaves nothing; an
// Abort ends it; neither leaves anything in the bucket.
func TestSmallObjectCancelAbort(t *testing.T) {
	srv := tests3.Start(t)
	s := newStore(t, srv, "tenant", DefaultPartSize)
	ctx, cancel := context.WithCancel(t.Context())
	p, err := s.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := p.Write([]byte("d")); !errors.Is(err, context.Canceled) {
		t.Errorf("Write after Create's ctx ended: %v, want context.Canceled", err)
	}
	if err := p.Commit(t.Context(), "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Commit after Create's ctx ended: %v, want context.Canceled", err)
	}
	wantAbsent(t, s, "k")

	p, err = s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := p.Abort(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("x")); !errors.Is(err, store.ErrFinished) {
		t.Errorf("Write after Abort: %v, want ErrFinished", err)
	}
	if err := p.Commit(t.Context(), "k"); !errors.Is(err, store.ErrFinished) {
		t.Errorf("Commit after Abort: %v, want ErrFinished", err)
	}
	if objects, uploads := bucketContents(t, s); len(objects)+len(uploads) != 0 {
		t.Errorf("bucket holds %v and uploads %v, want nothing", objects, uploads)
	}
}

// BenchmarkPutNarinfo measures putting a narinfo-sized object (1 KiB) into
// the versitygw test server: the time and the bytes allocated per object.
//
//	go test -run '^$' -bench PutNarinfo -benchmem ./cache-push/store/s3/
func BenchmarkPutNarinfo(b *testing.B) {
	srv := tests3.Start(b)
	s, err := New(Options{Endpoint: srv.Endpoint, Region: tests3.Region, Bucket: srv.Bucket, Prefix: "bench",
		AccessKey: tests3.AccessKey, SecretKey: tests3.SecretKey, InsecureHTTPUnsafe: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	body := bytes.Repeat([]byte("n"), 1<<10)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := store.Put(b.Context(), s, fmt.Sprintf("k%d.narinfo", i), bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
