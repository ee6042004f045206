package chunked_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"codeberg.org/provenix/provenix/cache-push/ingest"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/chunked"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/cache-push/store/storetest"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/tests3"
)

func newLocal(t testing.TB) *local.Store {
	t.Helper()
	s, err := local.New(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wrap(t testing.TB, inner store.Store, o chunked.Options) *chunked.Store {
	t.Helper()
	s, err := chunked.New(inner, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformanceLocal(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return wrap(t, newLocal(t), chunked.Options{}) })
}

// Chunks in a store of their own, as when caches share them.
func TestConformanceSeparateChunks(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return wrap(t, newLocal(t), chunked.Options{Chunks: newLocal(t)})
	})
}

func newS3(t testing.TB, srv *tests3.Server, prefix string) *s3.Store {
	t.Helper()
	s, err := s3.New(s3.Options{Endpoint: srv.Endpoint, Region: tests3.Region, Bucket: srv.Bucket, Prefix: prefix,
		AccessKey: tests3.AccessKey, SecretKey: tests3.SecretKey, InsecureHTTPUnsafe: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformanceS3(t *testing.T) {
	srv := tests3.Start(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		return wrap(t, newS3(t, srv, fmt.Sprintf("tenants/t%d", n.Add(1))), chunked.Options{})
	})
}

// version makes a NAR-like blob: n bytes of semi-compressible content where
// the parts listed in changed differ between versions.
func version(n int, changed map[int]bool) []byte {
	const part = 1 << 20
	out := make([]byte, 0, n)
	for i := 0; len(out) < n; i++ {
		seed := uint64(i)
		if changed[i] {
			seed += 1 << 32
		}
		rng := rand.New(rand.NewPCG(seed, seed))
		for len(out) < (i+1)*part && len(out) < n {
			if rng.IntN(3) == 0 {
				for range 64 + rng.IntN(256) {
					out = append(out, byte(rng.Uint32()))
				}
				continue
			}
			out = append(out, "the nix store path lib bin share include main return "[:8+rng.IntN(40)]...)
		}
	}
	return out[:n]
}

func ingestNAR(t *testing.T, s store.Store, nar []byte) ingest.Result {
	t.Helper()
	res, err := ingest.NAR(t.Context(), s, bytes.NewReader(nar), ingest.Expect{NarHash: sha256.Sum256(nar), NarSize: uint64(len(nar))}, ingest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// chunkFiles lists the chunk files of a local store and their total size.
func chunkFiles(t *testing.T, dir string) (map[string]bool, int64) {
	t.Helper()
	files := map[string]bool{}
	var total int64
	filepath.WalkDir(filepath.Join(dir, "chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			fi, _ := d.Info()
			files[filepath.Base(p)] = true
			total += fi.Size()
		}
		return nil
	})
	return files, total
}

// TestDedup: two NARs that differ in one MiB of eight share most chunks,
// each reads back as the exact file whose FileHash and FileSize ingest
// reported, and the file is a zstd stream that decompresses to the NAR.
func TestDedup(t *testing.T) {
	inner := newLocal(t)
	s := wrap(t, inner, chunked.Options{})
	v1 := version(8<<20, nil)
	v2 := version(8<<20, map[int]bool{3: true})
	r1 := ingestNAR(t, s, v1)
	files1, size1 := chunkFiles(t, inner.Dir())
	r2 := ingestNAR(t, s, v2)
	files2, size2 := chunkFiles(t, inner.Dir())
	added := len(files2) - len(files1)
	t.Logf("v1: %d chunks, %d bytes; v2 added %d chunks, %d bytes", len(files1), size1, added, size2-size1)
	if len(files1) < 50 || added > len(files1)/3 || size2-size1 > size1/3 {
		t.Errorf("v2 added %d chunks (%d bytes) to v1's %d (%d bytes), want most shared", added, size2-size1, len(files1), size1)
	}
	for _, c := range []struct {
		res ingest.Result
		nar []byte
	}{{r1, v1}, {r2, v2}} {
		file, err := store.ReadAll(t.Context(), s, c.res.URL, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(file) != c.res.FileHash || uint64(len(file)) != c.res.FileSize {
			t.Errorf("%s: served %d bytes that are not the file ingest described (%d bytes)", c.res.URL, len(file), c.res.FileSize)
		}
		fi, err := s.Stat(t.Context(), c.res.URL)
		if err != nil || uint64(fi.Size) != c.res.FileSize {
			t.Errorf("Stat(%s) = %+v, %v; want size %d", c.res.URL, fi, err, c.res.FileSize)
		}
		d, _ := zstd.NewReader(bytes.NewReader(file))
		got, err := io.ReadAll(d)
		d.Close()
		if err != nil || !bytes.Equal(got, c.nar) {
			t.Errorf("%s does not decompress to its NAR: %v", c.res.URL, err)
		}
		// What the wrapped store holds under the NAR's key is a list.
		raw, err := store.ReadAll(t.Context(), inner, c.res.URL, 64<<20)
		if err != nil || !bytes.HasPrefix(raw, []byte("provenix-chunk-list 1\n")) || len(raw) > len(file)/10 {
			t.Errorf("the wrapped store holds %d bytes under %s, want a short chunk list", len(raw), c.res.URL)
		}
	}
	var listed []string
	s.List(t.Context(), "", func(fi store.Info) error { listed = append(listed, fi.Key); return nil })
	if len(listed) != 2 {
		t.Errorf("List = %q, want the two NARs and no chunk", listed)
	}
}

// TestWholeNARStillServed: a NAR stored before chunking was turned on is
// read as it is.
func TestWholeNARStillServed(t *testing.T) {
	inner := newLocal(t)
	res := ingestNAR(t, inner, version(1<<20, nil))
	s := wrap(t, inner, chunked.Options{})
	file, err := store.ReadAll(t.Context(), s, res.URL, 64<<20)
	if err != nil || sha256.Sum256(file) != res.FileHash {
		t.Fatalf("whole NAR read through the chunked store: %d bytes, %v", len(file), err)
	}
	if fi, err := s.Stat(t.Context(), res.URL); err != nil || uint64(fi.Size) != res.FileSize {
		t.Errorf("Stat = %+v, %v; want size %d", fi, err, res.FileSize)
	}
}

// TestChunkKeysReserved: nobody writes or reads chunks through the store.
func TestChunkKeysReserved(t *testing.T) {
	s := wrap(t, newLocal(t), chunked.Options{})
	key := cachelayout.ChunkPrefix + "ab/" + strings.Repeat("ab", 32)
	if err := store.Put(t.Context(), s, key, strings.NewReader("x")); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("Put(%s) = %v, want ErrInvalidKey", key, err)
	}
	if _, err := s.Open(t.Context(), key); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("Open(%s) = %v, want ErrInvalidKey", key, err)
	}
	if err := s.Delete(t.Context(), key); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("Delete(%s) = %v, want ErrInvalidKey", key, err)
	}
}

// TestDamagedChunk: a chunk cut short, or gone, fails the read with an
// error instead of serving a short NAR.
func TestDamagedChunk(t *testing.T) {
	inner := newLocal(t)
	s := wrap(t, inner, chunked.Options{})
	res := ingestNAR(t, s, version(2<<20, nil))
	files := []string{}
	filepath.WalkDir(filepath.Join(inner.Dir(), "chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) < 2 {
		t.Fatalf("%d chunks", len(files))
	}
	if err := os.Truncate(files[0], 10); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ReadAll(t.Context(), s, res.URL, 64<<20); !errors.Is(err, chunked.ErrCorrupt) {
		t.Errorf("read with a truncated chunk = %v, want ErrCorrupt", err)
	}
	os.Remove(files[0])
	if _, err := store.ReadAll(t.Context(), s, res.URL, 64<<20); err == nil {
		t.Error("read with a missing chunk succeeded")
	}
}

// TestCollectChunks: gc's chunk step deletes the chunks of a deleted NAR
// that no other NAR uses, keeps the shared ones and the young ones.
func TestCollectChunks(t *testing.T) {
	inner := newLocal(t)
	s := wrap(t, inner, chunked.Options{})
	v1 := version(4<<20, nil)
	v2 := version(4<<20, map[int]bool{1: true})
	r1 := ingestNAR(t, s, v1)
	before, _ := chunkFiles(t, inner.Dir())
	r2 := ingestNAR(t, s, v2)
	all, _ := chunkFiles(t, inner.Dir())
	if err := s.Delete(t.Context(), r1.URL); err != nil {
		t.Fatal(err)
	}
	// Young chunks stay.
	if gone, err := s.CollectChunks(t.Context(), time.Now().Add(-time.Hour), false); err != nil || len(gone) != 0 {
		t.Fatalf("CollectChunks(an hour ago) = %d, %v; want nothing collected", len(gone), err)
	}
	gone, err := s.CollectChunks(t.Context(), time.Now().Add(time.Second), false)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := chunkFiles(t, inner.Dir())
	onlyV1 := 0
	for f := range all {
		_, inV1 := before[f]
		if inV1 && !after[f] {
			onlyV1++
		}
	}
	if len(gone) == 0 || len(gone) != len(all)-len(after) || onlyV1 != len(gone) || len(after) < len(before)/2 {
		t.Errorf("collected %d chunks of %d (v1 had %d), %d left: want only v1's own ones", len(gone), len(all), len(before), len(after))
	}
	// v2 reads whole.
	file, err := store.ReadAll(t.Context(), s, r2.URL, 64<<20)
	if err != nil || sha256.Sum256(file) != r2.FileHash {
		t.Errorf("v2 after collecting: %v", err)
	}
	if _, err := wrap(t, newLocal(t), chunked.Options{Chunks: inner}).CollectChunks(t.Context(), time.Now(), false); !errors.Is(err, chunked.ErrShared) {
		t.Errorf("CollectChunks of a separate chunk store = %v, want ErrShared", err)
	}
}

// TestLargeOtherObject: an object that is not a NAR but longer than one
// piece is cut into chunks while it is written (its key comes at Commit),
// then stored whole from them.
func TestLargeOtherObject(t *testing.T) {
	inner := newLocal(t)
	s := wrap(t, inner, chunked.Options{})
	data := version(3<<20+17, nil)
	if err := store.Put(t.Context(), s, "big.provenance.json", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	for _, st := range []store.Store{s, inner} {
		got, err := store.ReadAll(t.Context(), st, "big.provenance.json", 64<<20)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%T reads %d bytes, %v; want the %d written", st, len(got), err, len(data))
		}
	}
}
