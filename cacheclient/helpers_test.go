package cacheclient_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"

	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testcache"
)

// testCache is a real cache: a local store directory served by the
// project's cache server, with a real cache signing key.
type testCache struct {
	dir string
	url string
	sk  signature.SecretKey
	pk  signature.PublicKey
}

func newTestCache(t testing.TB) *testCache {
	t.Helper()
	c := testcache.Serve(t)
	return &testCache{dir: c.Dir, url: c.URL, sk: c.SecretKey, pk: c.PublicKey}
}

func (c *testCache) client(t testing.TB, keys ...string) *cacheclient.Client {
	t.Helper()
	if keys == nil {
		keys = []string{c.pk.String()}
	}
	cl, err := cacheclient.New(cacheclient.Options{URL: c.url + "/", PublicKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func (c *testCache) write(t testing.TB, key string, b []byte) {
	t.Helper()
	p := filepath.Join(c.dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// randomStorePath is a valid, unique store path named name.
func randomStorePath(name string) string { return testcache.StorePath(name) }

// narOf dumps a directory holding one file with content.
func narOf(t testing.TB, content []byte) []byte {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "f"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, d); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdOf(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// publish stores file (the NAR compressed as compression says) and a
// narinfo describing narBytes, signed by the cache key, for storePath.
// The narinfo is returned before signing-sensitive edits by the caller.
func (c *testCache) publish(t testing.TB, storePath string, narBytes, file []byte, compression string, refs ...string) *narinfo.NarInfo {
	t.Helper()
	fh := sha256.Sum256(file)
	nh := sha256.Sum256(narBytes)
	ext := map[string]string{"zstd": ".nar.zst", "xz": ".nar.xz", "none": ".nar", "bzip2": ".nar.bz2"}[compression]
	url := "nar/" + nixbase32.EncodeToString(fh[:]) + ext
	c.write(t, url, file)
	ni := &narinfo.NarInfo{
		StorePath:   storePath,
		URL:         url,
		Compression: compression,
		FileHash:    nixhash.MustNewHashWithEncoding(nixhash.SHA256, fh[:], nixhash.NixBase32, true),
		FileSize:    uint64(len(file)),
		NarHash:     nixhash.MustNewHashWithEncoding(nixhash.SHA256, nh[:], nixhash.NixBase32, true),
		NarSize:     uint64(len(narBytes)),
		References:  refs,
	}
	c.putNarinfo(t, ni, c.sk)
	return ni
}

// putNarinfo signs ni with sk (replacing its signatures) and stores it.
func (c *testCache) putNarinfo(t testing.TB, ni *narinfo.NarInfo, sk signature.SecretKey) {
	t.Helper()
	ni.Signatures = nil
	sig, err := sk.Sign(rand.Reader, ni.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	ni.Signatures = append(ni.Signatures, sig)
	c.write(t, cachelayout.NarinfoKey(ni.StorePath), []byte(ni.String()))
}
