package cacheclient_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/ulikunitz/xz"

	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/internal/testctx"
)

func xzOf(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// bzip2Of uses the bzip2 tool: Go's standard library only decompresses.
func bzip2Of(t testing.TB, b []byte) []byte {
	t.Helper()
	bin, err := exec.LookPath("bzip2")
	if err != nil {
		t.Fatal("bzip2 is required for this test: apt-get install bzip2")
	}
	cmd := exec.Command(bin, "-c")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestNARCompressions(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	tc := newTestCache(t)
	c := tc.client(t)
	narBytes := narOf(t, bytes.Repeat([]byte("provenix "), 10000))
	want := sha256.Sum256(narBytes)
	for comp, file := range map[string][]byte{
		"zstd": zstdOf(t, narBytes),
		"xz":   xzOf(t, narBytes),
		"none": narBytes,
	} {
		sp := randomStorePath("c-" + comp)
		tc.publish(t, sp, narBytes, file, comp)
		ni, err := c.Narinfo(ctx, sp)
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.NAR(ctx, ni)
		if err != nil {
			t.Fatalf("%s: %v", comp, err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, narBytes) {
			t.Fatalf("%s: read %d bytes, %v", comp, len(got), err)
		}
		d, err := c.VerifyNAR(ctx, ni)
		if err != nil || d.SHA256 != want || d.Size != uint64(len(narBytes)) {
			t.Fatalf("%s: VerifyNAR %x %d %v", comp, d.SHA256, d.Size, err)
		}
	}

	// bzip2, the narinfo default, from a plain file server (Provenix's
	// cache server serves only .nar, .nar.zst and .nar.xz).
	files := httptest.NewServer(http.FileServer(http.Dir(tc.dir)))
	t.Cleanup(files.Close)
	sp := randomStorePath("c-bzip2")
	ni := tc.publish(t, sp, narBytes, bzip2Of(t, narBytes), "bzip2")
	fc, err := cacheclient.New(cacheclient.Options{URL: files.URL, PublicKeys: []string{tc.pk.String()}})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := fc.VerifyNAR(ctx, ni); err != nil || d.SHA256 != want {
		t.Fatalf("bzip2: %x %v", d.SHA256, err)
	}
}

func TestNARMismatch(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	tc := newTestCache(t)
	c := tc.client(t)
	narBytes := narOf(t, []byte("the attested content"))
	other := narOf(t, []byte("the swapped  content"))
	if len(other) != len(narBytes) {
		t.Fatal("test NARs must have the same size")
	}
	garbage := zstdOf(t, narBytes)
	garbage[len(garbage)/2] ^= 0xff

	for name, tt := range map[string]struct {
		file []byte
		comp string
	}{
		"swapped bytes, same size": {zstdOf(t, other), "zstd"},
		"truncated":                {zstdOf(t, narBytes[:len(narBytes)-8]), "zstd"},
		"longer":                   {zstdOf(t, append(append([]byte{}, narBytes...), 0)), "zstd"},
		"longer uncompressed":      {append(append([]byte{}, narBytes...), 0), "none"},
		"corrupt zstd":             {garbage, "zstd"},
		"not xz":                   {narBytes, "xz"},
	} {
		sp := randomStorePath("m")
		ni := tc.publish(t, sp, narBytes, tt.file, tt.comp)
		if _, err := c.VerifyNAR(ctx, ni); !errors.Is(err, cacheclient.ErrMismatch) {
			t.Errorf("%s: %v, want ErrMismatch", name, err)
		}
		// The stream never hands out more than NarSize bytes.
		if r, err := c.NAR(ctx, ni); err == nil {
			n, _ := io.Copy(io.Discard, r)
			r.Close()
			if uint64(n) > ni.NarSize {
				t.Errorf("%s: read %d bytes, NarSize %d", name, n, ni.NarSize)
			}
		}
	}

	// An endless body under a forged FileSize (not signed): zstd skippable
	// frames that decompress to nothing are refused after NarSize + 1/8 +
	// 1 MiB of compressed bytes.
	skippable := make([]byte, 0, 3<<20)
	for len(skippable) < 3<<20 {
		frame := []byte{0x50, 0x2a, 0x4d, 0x18, 0xf8, 0xff, 0, 0}
		skippable = append(append(skippable, frame...), make([]byte, 0xfff8)...)
	}
	sp := randomStorePath("skippable")
	ni := tc.publish(t, sp, narBytes, append(skippable, zstdOf(t, narBytes)...), "zstd")
	ni.FileSize = 1 << 40
	tc.putNarinfo(t, ni, tc.sk)
	if _, err := c.VerifyNAR(ctx, ni); !errors.Is(err, cacheclient.ErrMismatch) || !strings.Contains(err.Error(), "longer than allowed") {
		t.Errorf("endless compressed body: %v, want ErrMismatch (longer than allowed)", err)
	}

	// A NAR the narinfo points to that is missing; a URL leaving the cache.
	sp = randomStorePath("gone")
	ni = tc.publish(t, sp, narBytes, narBytes, "none")
	os.Remove(filepath.Join(tc.dir, ni.URL))
	if _, err := c.VerifyNAR(ctx, ni); !errors.Is(err, cacheclient.ErrNotFound) {
		t.Errorf("missing NAR: %v, want ErrNotFound", err)
	}
	for _, u := range []string{"../secret.nar", "/etc/passwd", "http://evil/x.nar", "nar/x.nar?y", "nar/a b.nar"} {
		ni.URL = u
		if _, err := c.VerifyNAR(ctx, ni); !errors.Is(err, cacheclient.ErrMalformed) {
			t.Errorf("URL %q: %v, want ErrMalformed", u, err)
		}
	}
	ni.URL = "nar/x.nar"
	ni.NarSize = 1<<64 - 1
	if _, err := c.VerifyNAR(ctx, ni); !errors.Is(err, cacheclient.ErrMalformed) {
		t.Errorf("NarSize 2^64-1: %v, want ErrMalformed", err)
	}
	ni.NarSize = 100
	ni.URL, ni.Compression = "nar/x.nar.br", "br"
	if _, err := c.VerifyNAR(ctx, ni); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("unknown compression: %v", err)
	}
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// zstdBomb compresses size zero bytes with the zstd tool, as an attacker
// would.
func zstdBomb(t testing.TB, size string) []byte {
	t.Helper()
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Fatal("zstd is required for this test: apt-get install zstd")
	}
	out, err := exec.Command("sh", "-c", "head -c "+size+" /dev/zero | zstd -q -c -1").Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A narinfo that claims a small NAR over a 1 GiB zstd bomb: the stream is
// refused one byte past NarSize, in a small fraction of the time a full
// decompression of the same bomb takes (measured in the same run).
func TestNARZstdBomb(t *testing.T) {
	ctx := testctx.New(t, 2*time.Minute)
	tc := newTestCache(t)
	c := tc.client(t)
	bomb := zstdBomb(t, "1G")
	const bombSize = 1 << 30

	// The reference: the zstd tool decompressing the same bomb (not slowed
	// down by the race detector, so the ratio is conservative).
	t0 := time.Now()
	cmd := exec.Command("zstd", "-d", "-c")
	cmd.Stdin = bytes.NewReader(bomb)
	cr := &countWriter{}
	cmd.Stdout = cr
	if err := cmd.Run(); err != nil || cr.n != bombSize {
		t.Fatalf("the bomb decompresses to %d bytes (%v), want %d", cr.n, err, bombSize)
	}
	full := time.Since(t0)

	narBytes := narOf(t, []byte("small"))
	sp := randomStorePath("bomb")
	ni := tc.publish(t, sp, narBytes, bomb, "zstd")
	t0 = time.Now()
	_, err := c.VerifyNAR(ctx, ni)
	took := time.Since(t0)
	if !errors.Is(err, cacheclient.ErrMismatch) || !strings.Contains(err.Error(), "longer than its NarSize") {
		t.Fatalf("bomb: %v, want ErrMismatch (longer than NarSize)", err)
	}
	t.Logf("%d-byte zstd bomb of %d bytes: refused in %v; full decompression %v (%.0f×)", len(bomb), bombSize, took, full, float64(full)/float64(took))
	if took > full/10 {
		t.Fatalf("refusing the bomb took %v, full decompression %v: it was not stopped early", took, full)
	}
}

// Memory does not grow with the NAR: verifying a 64 MiB NAR allocates a
// bounded amount (decoder window and buffers), not the NAR.
func TestNARMemory(t *testing.T) {
	ctx := testctx.New(t, 2*time.Minute)
	tc := newTestCache(t)
	c := tc.client(t)
	// Compressible but not trivially so: a repeated 1 MiB pseudo-random
	// block (zstd's window is smaller, so it must really decode).
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i*7 + i/3)
	}
	content := bytes.Repeat(block, 64)
	narBytes := narOf(t, content)
	sp := randomStorePath("big")
	ni := tc.publish(t, sp, narBytes, zstdOf(t, narBytes), "zstd")
	content, narBytes = nil, nil
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := c.VerifyNAR(ctx, ni); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("verifying a %d MiB NAR allocated %d KiB", ni.NarSize>>20, alloc>>10)
	if alloc > 20<<20 {
		t.Fatalf("verifying a %d MiB NAR allocated %d MiB", ni.NarSize>>20, alloc>>20)
	}
}

// DecodeNAR checks a NAR opened from elsewhere as NAR does; the Unsafe
// variant skips only the hash: a same-size NAR of other bytes passes it,
// a longer or shorter one does not.
func TestDecodeNAR(t *testing.T) {
	tc := newTestCache(t)
	narBytes := narOf(t, []byte("the right bytes"))
	// Uncompressed, so that FileSize does not bound a NAR of other bytes
	// first.
	ni := tc.publish(t, randomStorePath("decode"), narBytes, narBytes, "none")
	read := func(decode func(string, io.ReadCloser, *narinfo.NarInfo) (io.ReadCloser, error), nar []byte) ([]byte, error) {
		r, err := decode("test", io.NopCloser(bytes.NewReader(nar)), ni)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return io.ReadAll(r)
	}
	if b, err := read(cacheclient.DecodeNAR, narBytes); err != nil || !bytes.Equal(b, narBytes) {
		t.Fatalf("DecodeNAR of the NAR: %v", err)
	}
	other := narOf(t, []byte("the wrong bytes"))
	if _, err := read(cacheclient.DecodeNAR, other); !errors.Is(err, cacheclient.ErrMismatch) {
		t.Fatalf("DecodeNAR of another NAR: %v, want ErrMismatch", err)
	}
	if b, err := read(cacheclient.DecodeNARUnsafe, other); err != nil || !bytes.Equal(b, other) {
		t.Fatalf("DecodeNARUnsafe of a same-size NAR: %v", err)
	}
	for _, nar := range [][]byte{narOf(t, []byte("the wrong bytes, longer")), narOf(t, []byte("short"))} {
		if _, err := read(cacheclient.DecodeNARUnsafe, nar); !errors.Is(err, cacheclient.ErrMismatch) {
			t.Errorf("DecodeNARUnsafe of a %d-byte NAR for %d: %v, want ErrMismatch", len(nar), ni.NarSize, err)
		}
	}
}
