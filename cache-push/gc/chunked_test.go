package gc

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/cache-push/ingest"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/chunked"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/internal/testctx"
)

// chunkNAR is 3 MiB of mixed text and noise; seeds in other replace the
// one of their MiB, so two NARs share the other MiBs.
func chunkNAR(other map[int]uint64) []byte {
	var out []byte
	for i := range 3 {
		seed := uint64(i)
		if s, ok := other[i]; ok {
			seed = s
		}
		rng := rand.New(rand.NewPCG(seed, seed))
		for len(out) < (i+1)<<20 {
			if rng.IntN(3) == 0 {
				for range 64 + rng.IntN(256) {
					out = append(out, byte(rng.Uint32()))
				}
				continue
			}
			out = append(out, "nix store path lib bin share include "[:4+rng.IntN(30)]...)
		}
		out = out[:(i+1)<<20]
	}
	return out
}

// chunkFiles lists the chunks of a local store's directory.
func chunkFiles(t *testing.T, dir string) map[string]bool {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "chunks", "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range m {
		out[filepath.Base(f)] = true
	}
	return out
}

// TestChunksCollected: collecting a path of a chunked cache deletes the
// chunks only its NAR used and keeps those it shared with a kept path,
// which still reads whole; a run within the grace deletes no chunk.
func TestChunksCollected(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	inner, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st, err := chunked.New(inner, chunked.Options{})
	if err != nil {
		t.Fatal(err)
	}
	add := func(name string, nar []byte) (string, ingest.Result) {
		t.Helper()
		sum := sha256.Sum256(nar)
		res, err := ingest.NAR(ctx, st, bytes.NewReader(nar), ingest.Expect{NarHash: sum, NarSize: uint64(len(nar))}, ingest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		sp := storePath(name)
		ni := &narinfo.NarInfo{StorePath: sp, URL: res.URL, Compression: "zstd",
			FileHash: nixhash.MustNewHashWithEncoding(nixhash.SHA256, res.FileHash[:], nixhash.NixBase32, true), FileSize: res.FileSize,
			NarHash: nixhash.MustNewHashWithEncoding(nixhash.SHA256, sum[:], nixhash.NixBase32, true), NarSize: uint64(len(nar))}
		if err := store.Put(ctx, st, hashPart(sp)+".narinfo", bytes.NewReader([]byte(ni.String()))); err != nil {
			t.Fatal(err)
		}
		return sp, res
	}
	_, resOld := add("old-1.0", chunkNAR(nil))
	oldChunks := chunkFiles(t, inner.Dir())
	newPath, resNew := add("new-1.1", chunkNAR(map[int]uint64{1: 99}))
	all := chunkFiles(t, inner.Dir())
	newOnly := len(all) - len(oldChunks)
	if len(oldChunks) < 20 || newOnly == 0 || newOnly > len(oldChunks)/2 {
		t.Fatalf("old NAR has %d chunks, the new one adds %d: want most shared", len(oldChunks), newOnly)
	}

	// The old path's narinfo is past the grace, its chunks are not: the
	// path goes, its chunks stay.
	aged := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(filepath.Join(inner.Dir(), hashPart(storePath("old-1.0"))+".narinfo"), aged, aged); err != nil {
		t.Fatal(err)
	}
	opts := Options{Keep: []string{newPath}, Grace: time.Hour, Now: time.Now()}
	rep, err := Run(ctx, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Paths) != 1 || len(rep.Chunks) != 0 || len(chunkFiles(t, inner.Dir())) != len(all) {
		t.Fatalf("within the grace: collected %d paths and %d chunks, want the old path and no chunk", len(rep.Paths), len(rep.Chunks))
	}
	if _, err := st.Stat(ctx, resOld.URL); err == nil {
		t.Fatal("the old path's NAR is still there")
	}

	// Past it: exactly the chunks only the old NAR used go.
	opts.Now = time.Now().Add(2 * time.Hour)
	rep, err = Run(ctx, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	left := chunkFiles(t, inner.Dir())
	for c := range left {
		if !all[c] {
			t.Errorf("chunk %s appeared", c)
		}
	}
	want := 0
	newList, err := os.ReadFile(filepath.Join(inner.Dir(), resNew.URL))
	if err != nil {
		t.Fatal(err)
	}
	for c := range all {
		if bytes.Contains(newList, []byte(c)) {
			want++
			if !left[c] {
				t.Errorf("chunk %s of the kept NAR collected", c)
			}
		} else if left[c] {
			t.Errorf("chunk %s that only the collected NAR used kept", c)
		}
	}
	if len(left) != want || len(rep.Chunks) != len(all)-want || len(rep.Chunks) == 0 {
		t.Errorf("%d chunks left, want %d; report says %d collected", len(left), want, len(rep.Chunks))
	}
	nar, err := store.ReadAll(ctx, st, resNew.URL, 64<<20)
	if err != nil || sha256.Sum256(nar) != resNew.FileHash {
		t.Errorf("kept NAR after gc: %v", err)
	}
}
