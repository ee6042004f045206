package ingest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/chunked"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testcache"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/nix"
)

// zstdFrames is how many frames the zstd CLI finds in file, after `zstd -t`
// has checked that it decompresses.
func zstdFrames(t *testing.T, file string) int {
	t.Helper()
	zstdCLI := testproc.Tool(t, "zstd", "apt-get install zstd")
	if out, err := exec.Command(zstdCLI, "-tq", file).CombinedOutput(); err != nil {
		t.Fatalf("zstd -t %s: %v\n%s", file, err, out)
	}
	out, err := exec.Command(zstdCLI, "-lv", file).CombinedOutput()
	if err != nil {
		t.Fatalf("zstd -lv %s: %v\n%s", file, err, out)
	}
	m := regexp.MustCompile(`# Zstandard Frames: (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("zstd -lv %s prints no frame count:\n%s", file, out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// TestNARStockNixSubstitutes: a NAR ingested as several frames passes
// `zstd -t`, and the stock nix of every tested version (Debian's on the
// host, and the chroots' newer ones) substitutes it from a file:// cache
// into an empty store, with the same contents.
func TestNARStockNixSubstitutes(t *testing.T) {
	envs := testnix.Versions(t)
	ctx := testctx.New(t, 10*time.Minute)
	// Three frames and a bit: the last one partial.
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.WriteFile(filepath.Join(tree, "bin", "tool"), []byte("#!/bin/sh\necho multi-frame\n"), 0o755)
	os.WriteFile(filepath.Join(tree, "big"), semiCompressible(9, 3*frameSize+frameSize/3), 0o644)
	os.Symlink("big", filepath.Join(tree, "link"))
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, tree); err != nil {
		t.Fatal(err)
	}
	narBytes := buf.Bytes()
	var name [20]byte
	rand.Read(name[:])
	storePath := "/nix/store/" + nixbase32.EncodeToString(name[:]) + "-multi-frame"
	sk, pk, err := signature.GenerateKeypair("ingest-test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	for _, env := range envs {
		t.Run(env.String(), func(t *testing.T) {
			cache := env.TempDir(t)
			st, err := local.New(env.HostPath(cache))
			if err != nil {
				t.Fatal(err)
			}
			res, err := NAR(ctx, st, bytes.NewReader(narBytes), expectFor(narBytes), Options{Concurrency: 3})
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(env.HostPath(cache), filepath.FromSlash(res.URL))
			if n := zstdFrames(t, file); n != 4 {
				t.Fatalf("%s holds %d zstd frames, want 4 (%d-byte NAR in %d-byte frames)", res.URL, n, len(narBytes), frameSize)
			}
			zst, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if ni := testcache.PublishZstd(t, env.HostPath(cache), sk, storePath, narBytes, zst); ni.URL != res.URL {
				t.Fatalf("the narinfo names %s, ingest stored %s", ni.URL, res.URL)
			}
			testcache.Write(t, env.HostPath(cache), cachelayout.CacheInfoKey, []byte(cachelayout.CacheInfo(0)))

			root := env.TempDir(t)
			args := []string{"--store", root, "-r", storePath}
			for k, v := range nix.SubstituteOptions("file://"+cache, pk.String()) {
				args = append(args, "--option", k, v)
			}
			if out, err := env.Command(ctx, "nix-store", args...).CombinedOutput(); err != nil {
				t.Fatalf("%s: nix-store -r from the cache: %v\n%s", env, err, out)
			}
			var got bytes.Buffer
			if err := nar.DumpPath(&got, env.HostPath(root+storePath)); err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got.Bytes()) != sha256.Sum256(narBytes) {
				t.Errorf("%s: the substituted path dumps to %d bytes that differ from the %d-byte NAR", env, got.Len(), len(narBytes))
			}
		})
	}
}

// TestChunkedNARStockNixSubstitutes: a NAR ingested into a chunked store
// (store/chunked's NAREncoder: one small zstd frame, with its checksum,
// per content-defined chunk) and read back through the store as the
// cache server serves it is substituted by the stock nix of every tested
// version, not only the host's.
func TestChunkedNARStockNixSubstitutes(t *testing.T) {
	envs := testnix.Versions(t)
	ctx := testctx.New(t, 10*time.Minute)
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(tree, 0o755)
	os.WriteFile(filepath.Join(tree, "big"), semiCompressible(11, 3<<20), 0o644)
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, tree); err != nil {
		t.Fatal(err)
	}
	narBytes := buf.Bytes()
	inner, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st, err := chunked.New(inner, chunked.Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := NAR(ctx, st, bytes.NewReader(narBytes), expectFor(narBytes), Options{})
	if err != nil {
		t.Fatal(err)
	}
	zst, err := store.ReadAll(ctx, st, res.URL, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(zst); sum != res.FileHash || uint64(len(zst)) != res.FileSize {
		t.Fatalf("the chunked store serves %d bytes that are not the %d-byte file ingest hashed", len(zst), res.FileSize)
	}
	file := filepath.Join(t.TempDir(), "nar.zst")
	if err := os.WriteFile(file, zst, 0o644); err != nil {
		t.Fatal(err)
	}
	if n := zstdFrames(t, file); n < 10 {
		t.Fatalf("the chunked NAR file holds %d zstd frames, want one per chunk (many)", n)
	}
	var name [20]byte
	rand.Read(name[:])
	storePath := "/nix/store/" + nixbase32.EncodeToString(name[:]) + "-chunked"
	sk, pk, err := signature.GenerateKeypair("ingest-test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range envs {
		t.Run(env.String(), func(t *testing.T) {
			cache := env.TempDir(t)
			testcache.PublishZstd(t, env.HostPath(cache), sk, storePath, narBytes, zst)
			testcache.Write(t, env.HostPath(cache), cachelayout.CacheInfoKey, []byte(cachelayout.CacheInfo(0)))
			root := env.TempDir(t)
			args := []string{"--store", root, "-r", storePath}
			for k, v := range nix.SubstituteOptions("file://"+cache, pk.String()) {
				args = append(args, "--option", k, v)
			}
			if out, err := env.Command(ctx, "nix-store", args...).CombinedOutput(); err != nil {
				t.Fatalf("%s: nix-store -r from the cache: %v\n%s", env, err, out)
			}
			var got bytes.Buffer
			if err := nar.DumpPath(&got, env.HostPath(root+storePath)); err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got.Bytes()) != sha256.Sum256(narBytes) {
				t.Errorf("%s: the substituted path dumps to %d bytes that differ from the %d-byte NAR", env, got.Len(), len(narBytes))
			}
		})
	}
}
