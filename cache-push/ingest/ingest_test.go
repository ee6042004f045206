package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/local"
)

// testNAR dumps a small store-path-like tree (regular, executable, symlink,
// nested directory, a larger semi-compressible file) with go-nix, so the
// tests run on real NAR bytes.
func testNAR(t testing.TB) []byte {
	t.Helper()
	root := filepath.Join(t.TempDir(), "out")
	files := map[string]struct {
		data string
		mode os.FileMode
	}{
		"bin/hello":             {"#!/bin/sh\necho hello\n", 0o755},
		"share/doc/README":      {"Hello, world.\n", 0o644},
		"share/empty":           {"", 0o644},
		"lib/libhello.so.1.0.0": {string(semiCompressible(1, 300<<10)), 0o644},
	}
	for name, f := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("libhello.so.1.0.0", filepath.Join(root, "lib/libhello.so")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, root); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// semiCompressible mixes text-like runs with random bytes, roughly like the
// binaries and data of a store path (zstd -3 shrinks it about 2–3×).
func semiCompressible(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	words := strings.Fields("the of and to in is for on that with nix store path lib bin share " +
		"include main return int char void const static struct if else while printf error")
	out := make([]byte, 0, n+64)
	for len(out) < n {
		if rng.IntN(4) == 0 {
			for range 64 + rng.IntN(512) {
				out = append(out, byte(rng.Uint32()))
			}
			continue
		}
		for range 16 + rng.IntN(64) {
			out = append(out, words[rng.IntN(len(words))]...)
			out = append(out, ' ')
		}
		out = append(out, '\n')
	}
	return out[:n]
}

func expectFor(b []byte) Expect {
	return Expect{NarHash: sha256.Sum256(b), NarSize: uint64(len(b))}
}

func newStore(t testing.TB) *local.Store {
	t.Helper()
	s, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func listKeys(t *testing.T, s store.Store) []string {
	t.Helper()
	var ks []string
	if err := s.List(t.Context(), "", func(fi store.Info) error {
		ks = append(ks, fi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ks
}

func decompress(t *testing.T, b []byte) []byte {
	t.Helper()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	out, err := dec.DecodeAll(b, nil)
	if err != nil {
		t.Fatalf("decompressing stored NAR: %v", err)
	}
	return out
}

func TestNAR(t *testing.T) {
	narBytes := testNAR(t)
	if _, err := nar.NewReader(bytes.NewReader(narBytes)); err != nil {
		t.Fatalf("test NAR does not parse: %v", err)
	}
	tests := []struct {
		name string
		o    Options
	}{
		{"default", Options{}},
		{"fastest", Options{Level: zstd.SpeedFastest}},
		{"better", Options{Level: zstd.SpeedBetterCompression}},
		{"concurrency2", Options{Concurrency: 2}},
		{"concurrency4", Options{Concurrency: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			res, err := NAR(t.Context(), s, bytes.NewReader(narBytes), expectFor(narBytes), tt.o)
			if err != nil {
				t.Fatal(err)
			}
			stored, err := store.ReadAll(t.Context(), s, res.URL, 64<<20)
			if err != nil {
				t.Fatal(err)
			}
			if got := sha256.Sum256(stored); got != res.FileHash {
				t.Errorf("FileHash %x, stored file hashes to %x", res.FileHash, got)
			}
			if uint64(len(stored)) != res.FileSize {
				t.Errorf("FileSize %d, stored file has %d bytes", res.FileSize, len(stored))
			}
			wantURL := "nar/" + nixbase32.EncodeToString(res.FileHash[:]) + ".nar.zst"
			if res.URL != wantURL || len(res.URL) != len("nar/")+52+len(".nar.zst") {
				t.Errorf("URL %q, want %q", res.URL, wantURL)
			}
			if res.NarHash != sha256.Sum256(narBytes) || res.NarSize != uint64(len(narBytes)) {
				t.Errorf("Result NAR fields %x/%d, want the input's", res.NarHash, res.NarSize)
			}
			if got := decompress(t, stored); !bytes.Equal(got, narBytes) {
				t.Errorf("stored file decompresses to %d bytes that differ from the %d-byte NAR", len(got), len(narBytes))
			}
			if res.FileSize >= res.NarSize {
				t.Errorf("compressed %d bytes into %d", res.NarSize, res.FileSize)
			}
			if ks := listKeys(t, s); len(ks) != 1 || ks[0] != res.URL {
				t.Errorf("store holds %q, want only %q", ks, res.URL)
			}
		})
	}
}

func TestNARIdempotent(t *testing.T) {
	narBytes := testNAR(t)
	s := newStore(t)
	first, err := NAR(t.Context(), s, bytes.NewReader(narBytes), expectFor(narBytes), Options{})
	if err != nil {
		t.Fatal(err)
	}
	second, err := NAR(t.Context(), s, bytes.NewReader(narBytes), expectFor(narBytes), Options{})
	if err != nil {
		t.Fatalf("second ingest of the same NAR: %v", err)
	}
	if first != second {
		t.Errorf("second ingest gave %+v, first %+v", second, first)
	}
	if ks := listKeys(t, s); len(ks) != 1 {
		t.Errorf("store holds %q, want one object", ks)
	}
}

var errBoom = errors.New("boom")

// countingReader counts how much NAR r handed out.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestNARFailures(t *testing.T) {
	narBytes := testNAR(t)
	good := expectFor(narBytes)
	badHash := good
	badHash.NarHash[0] ^= 1
	half := len(narBytes) / 2
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()

	tests := []struct {
		name    string
		ctx     context.Context
		r       io.Reader
		want    Expect
		wantErr error
		inMsg   []string
	}{
		{"wrong hash", t.Context(), bytes.NewReader(narBytes), badHash, ErrNarHashMismatch,
			[]string{"sha256:" + nixbase32.EncodeToString(badHash.NarHash[:]), "sha256:" + nixbase32.EncodeToString(good.NarHash[:])}},
		{"truncated stream", t.Context(), bytes.NewReader(narBytes[:half]), good, ErrNarSizeMismatch,
			[]string{"stream ended early"}},
		{"longer stream", t.Context(), io.MultiReader(bytes.NewReader(narBytes), strings.NewReader("x")), good, ErrNarSizeMismatch,
			[]string{"expected"}},
		{"size declared too small", t.Context(), bytes.NewReader(narBytes), Expect{good.NarHash, good.NarSize - 1}, ErrNarSizeMismatch, nil},
		{"size declared too large", t.Context(), bytes.NewReader(narBytes), Expect{good.NarHash, good.NarSize + 1}, ErrNarSizeMismatch, nil},
		{"absurd size", t.Context(), bytes.NewReader(narBytes), Expect{good.NarHash, 1 << 63}, ErrNarSizeMismatch, nil},
		{"reader error", t.Context(), io.MultiReader(bytes.NewReader(narBytes[:half]), iotest.ErrReader(errBoom)), good, errBoom,
			[]string{"reading NAR after"}},
		{"cancelled", cancelled, bytes.NewReader(narBytes), good, context.Canceled, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			res, err := NAR(tt.ctx, s, tt.r, tt.want, Options{})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("NAR() = %+v, %v; want %v", res, err, tt.wantErr)
			}
			if errors.Is(tt.wantErr, ErrMismatch) != errors.Is(err, ErrMismatch) {
				t.Errorf("errors.Is(%v, ErrMismatch) = %v", err, !errors.Is(tt.wantErr, ErrMismatch))
			}
			for _, s := range tt.inMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if ks := listKeys(t, s); len(ks) != 0 {
				t.Errorf("store holds %q after a failed ingest, want nothing", ks)
			}
			if tmp, _ := os.ReadDir(filepath.Join(s.Dir(), ".tmp")); len(tmp) != 0 {
				t.Errorf("%d temporary files left after a failed ingest", len(tmp))
			}
		})
	}
}

func TestNARReadsAtMostSizePlusOne(t *testing.T) {
	narBytes := testNAR(t)
	// An endless stream must not be read to its end.
	endless := &countingReader{r: io.MultiReader(bytes.NewReader(narBytes), rand.NewChaCha8([32]byte{}))}
	_, err := NAR(t.Context(), newStore(t), endless, expectFor(narBytes), Options{})
	if !errors.Is(err, ErrNarSizeMismatch) {
		t.Fatalf("NAR() = %v, want ErrNarSizeMismatch", err)
	}
	if endless.n != int64(len(narBytes))+1 {
		t.Errorf("read %d bytes, want NarSize+1 = %d", endless.n, len(narBytes)+1)
	}
}

func TestNARRejectsZeroHash(t *testing.T) {
	narBytes := testNAR(t)
	s := newStore(t)
	if _, err := NAR(t.Context(), s, bytes.NewReader(narBytes), Expect{NarSize: uint64(len(narBytes))}, Options{}); err == nil {
		t.Fatal("NAR() with no NarHash succeeded")
	}
	if ks := listKeys(t, s); len(ks) != 0 {
		t.Errorf("store holds %q, want nothing", ks)
	}
}

func TestNARConstantMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 128 MiB; run without -short")
	}
	// The NAR is never in memory: it is generated twice from the same seed,
	// once to learn its hash and once to ingest it.
	const size = 128 << 20
	gen := func() io.Reader { return io.LimitReader(rand.NewChaCha8([32]byte{7}), size) }
	h := sha256.New()
	io.Copy(h, gen())
	var want Expect
	h.Sum(want.NarHash[:0])
	want.NarSize = size

	// One NAR holds a frame per worker and an encoder per frame
	// compressing, so its memory grows with GOMAXPROCS (TestPeakRSS
	// measures that); this test is about the NAR's size, at 2 workers.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	s := newStore(t)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if _, err := NAR(t.Context(), s, gen(), want, Options{}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	// The encoder's window and buffers are a few MiB, whatever the size.
	t.Logf("ingesting %d MiB allocated %.1f MiB in total", size>>20, float64(after.TotalAlloc-before.TotalAlloc)/(1<<20))
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 32<<20 {
		t.Errorf("ingesting %d MiB allocated %d MiB, want it bounded by the encoder's buffers", size>>20, alloc>>20)
	}
}
