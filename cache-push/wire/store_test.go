package wire

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/chunked"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/internal/tests3"
)

func TestOpenStoreDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	if _, err := OpenStore(t.Context(), StoreOptions{Dir: dir, MustExist: true}); !errors.Is(err, ErrOptions) {
		t.Fatalf("MustExist on a missing directory: %v, want ErrOptions", err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatal("MustExist created the directory")
	}
	st, err := OpenStore(t.Context(), StoreOptions{Dir: dir, Sweep: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, ok := st.Store.(*local.Store); !ok || st.Where != dir {
		t.Errorf("opened %T at %q, want a *local.Store at %q", st.Store, st.Where, dir)
	}
	if n := st.DefaultConcurrency(); n != DirConcurrency {
		t.Errorf("a directory's default concurrency %d, want %d", n, DirConcurrency)
	}
	if err := store.Put(t.Context(), st, "x.narinfo", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	// Flushed a filesystem at a time, the same directory takes writes.
	fs, err := OpenStore(t.Context(), StoreOptions{Dir: dir, Flush: FlushFilesystem})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(t.Context(), fs, "y.narinfo", strings.NewReader("y")); err != nil {
		t.Fatal(err)
	}
	fs.Close()
	// Now it exists, MustExist opens it.
	again, err := OpenStore(t.Context(), StoreOptions{Dir: dir, MustExist: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.Stat(t.Context(), "x.narinfo"); err != nil {
		t.Errorf("reopened store lacks what was written: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestOpenStoreInvalid(t *testing.T) {
	for name, o := range map[string]StoreOptions{
		"nothing":       {},
		"both":          {Dir: t.TempDir(), S3: &s3.Options{Endpoint: "h", Bucket: "b", AccessKey: "a", SecretKey: "s"}},
		"invalid s3":    {S3: &s3.Options{Endpoint: "http://h", Bucket: "b", AccessKey: "a", SecretKey: "s"}},
		"no s3 secret":  {S3: &s3.Options{Endpoint: "h", Bucket: "b", AccessKey: "a"}},
		"negative tick": {S3: &s3.Options{Endpoint: "h", Bucket: "b", AccessKey: "a", SecretKey: "s", StaleEvery: -1}},
		"bad chunking":  {Dir: t.TempDir(), Chunking: "rabin"},
		"shared, whole": {Dir: t.TempDir(), SharedChunks: t.TempDir()},
		"bad flush":     {Dir: t.TempDir(), Flush: "sync"},
		"flush s3 fs":   {S3: &s3.Options{Endpoint: "h", Bucket: "b", AccessKey: "a", SecretKey: "s"}, Flush: FlushFilesystem},
	} {
		if _, err := OpenStore(t.Context(), o); !errors.Is(err, ErrOptions) {
			t.Errorf("%s: %v, want ErrOptions", name, err)
		}
	}
}

// TestOpenStoreS3: a bucket that does not exist fails to open (not a
// usage error: the options are fine); one that does opens, with its
// sweeper running when Sweep asks for it, until Close.
func TestOpenStoreS3(t *testing.T) {
	srv := tests3.Start(t)
	opts := func(bucket string) *s3.Options {
		return &s3.Options{Endpoint: srv.Endpoint, Region: tests3.Region, Bucket: bucket, Prefix: "tenants/a",
			AccessKey: tests3.AccessKey, SecretKey: tests3.SecretKey, InsecureHTTPUnsafe: true,
			// Sweep often, but only what is older than any upload here:
			// a tiny age would take a Put's temporary object mid-commit.
			StaleEvery: 20 * time.Millisecond, StaleAge: time.Hour}
	}
	if _, err := OpenStore(t.Context(), StoreOptions{S3: opts("no-such-bucket")}); err == nil || errors.Is(err, ErrOptions) {
		t.Errorf("missing bucket: %v, want a failure other than ErrOptions", err)
	}
	st, err := OpenStore(t.Context(), StoreOptions{S3: opts(srv.Bucket), Sweep: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := "s3://" + srv.Bucket + "/tenants/a"; st.Where != want {
		t.Errorf("Where = %q, want %q", st.Where, want)
	}
	// An open S3 upload of more than 1 MiB holds a part in memory.
	if n := st.DefaultConcurrency(); n != S3Concurrency {
		t.Errorf("S3's default concurrency %d, want %d", n, S3Concurrency)
	}
	// Sweep started the store's sweeper (s3.TestSweeper shows what it
	// removes): a second start is refused while it runs.
	if err := st.s3.Start(); err == nil {
		t.Error("Sweep did not start the sweeper")
	}
	if err := store.Put(t.Context(), st, "x.narinfo", strings.NewReader("kept")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // sweeps, which leave committed objects alone
	if _, err := st.Stat(t.Context(), "x.narinfo"); err != nil {
		t.Fatalf("the sweeper removed a committed object: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// Close stopped it: it can start again.
	if err := st.s3.Start(); err != nil {
		t.Errorf("Start after Close: %v", err)
	}
	st.s3.Close()
	ro, err := OpenStore(t.Context(), StoreOptions{S3: opts(srv.Bucket)})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.s3.Start(); err != nil {
		t.Errorf("without Sweep a sweeper runs already: %v", err)
	}
}

// TestOpenStoreChunked: --chunking fastcdc wraps the store (NARs are
// chunk lists in the directory, chunks beside them or in the shared
// directory).
func TestOpenStoreChunked(t *testing.T) {
	for _, shared := range []string{"", t.TempDir()} {
		dir := t.TempDir()
		st, err := OpenStore(t.Context(), StoreOptions{Dir: dir, Chunking: ChunkingFastCDC, SharedChunks: shared})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := st.Store.(*chunked.Store); !ok {
			t.Fatalf("store is a %T, want *chunked.Store", st.Store)
		}
		key := "nar/0000000000000000000000000000000000000000000000000000.nar.zst"
		if err := store.Put(t.Context(), st, key, strings.NewReader("nar file")); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(filepath.Join(dir, key))
		if err != nil || !strings.HasPrefix(string(raw), "provenix-chunk-list 1") {
			t.Errorf("%s holds %q, %v; want a chunk list", key, raw, err)
		}
		chunkDir := dir
		if shared != "" {
			chunkDir = shared
		}
		if m, _ := filepath.Glob(filepath.Join(chunkDir, "chunks", "*", "*")); len(m) != 1 {
			t.Errorf("chunks in %s: %q, want one", chunkDir, m)
		}
		st.Close()
	}
}
