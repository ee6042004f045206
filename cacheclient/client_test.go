package cacheclient_test

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
)

func TestNew(t *testing.T) {
	for _, bad := range []cacheclient.Options{
		{URL: ""},
		{URL: "127.0.0.1:8080"},
		{URL: "file:///tmp/cache"},
		{URL: "http://h/?q=1"},
		{URL: "http://h", PublicKeys: []string{"no-colon"}},
		{URL: "http://h", PublicKeys: []string{"name:dG9vc2hvcnQ="}},
	} {
		if _, err := cacheclient.New(bad); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
	c, err := cacheclient.New(cacheclient.Options{URL: "http://127.0.0.1:1/sub//"})
	if err != nil || c.URL() != "http://127.0.0.1:1/sub" || c.ChecksSignatures() {
		t.Fatalf("New: %v %q", err, c.URL())
	}
}

func TestNarinfo(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	tc := newTestCache(t)
	dep := randomStorePath("dep")
	sp := randomStorePath("hello")
	narBytes := narOf(t, []byte("hello"))
	want := tc.publish(t, sp, narBytes, zstdOf(t, narBytes), "zstd", dep[len("/nix/store/"):])

	ni, err := tc.client(t).Narinfo(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	if ni.StorePath != sp || ni.NarSize != want.NarSize || ni.NarHash.String() != want.NarHash.String() {
		t.Fatalf("narinfo %+v, want %+v", ni, want)
	}
	if refs := cacheclient.References(ni); len(refs) != 1 || refs[0] != dep {
		t.Fatalf("References %v, want [%s]", refs, dep)
	}

	// Like Nix, keys this client does not know are ignored.
	if ni, err := cacheclient.ParseNarinfo([]byte(want.String() + "FutureField: x\n")); err != nil || ni.StorePath != sp {
		t.Fatalf("narinfo with an unknown key: %v", err)
	}

	// A second trusted key besides the right one still accepts; a key of the
	// same name but other bytes alone does not.
	_, otherPub, _ := signature.GenerateKeypair("other-1", rand.Reader)
	if _, err := tc.client(t, otherPub.String(), tc.pk.String()).Narinfo(ctx, sp); err != nil {
		t.Fatalf("two trusted keys: %v", err)
	}
	_, samePub, _ := signature.GenerateKeypair(tc.pk.Name, rand.Reader)
	if _, err := tc.client(t, samePub.String()).Narinfo(ctx, sp); !errors.Is(err, cacheclient.ErrUntrusted) {
		t.Fatalf("impostor key of the same name: %v, want ErrUntrusted", err)
	}
	// No keys: no signature check (documented), even for an unsigned narinfo.
	noKeys, err := cacheclient.New(cacheclient.Options{URL: tc.url})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := noKeys.Narinfo(ctx, sp); err != nil {
		t.Fatalf("no keys: %v", err)
	}
}

func TestNarinfoSignatures(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	tc := newTestCache(t)
	sp := randomStorePath("signed")
	narBytes := narOf(t, []byte("signed"))
	ni := tc.publish(t, sp, narBytes, zstdOf(t, narBytes), "zstd")
	c := tc.client(t)

	// Signed by another key: untrusted.
	mallory, _, _ := signature.GenerateKeypair("mallory-1", rand.Reader)
	tc.putNarinfo(t, ni, mallory)
	if _, err := c.Narinfo(ctx, sp); !errors.Is(err, cacheclient.ErrUntrusted) || !strings.Contains(err.Error(), tc.url) {
		t.Fatalf("foreign signature: %v, want ErrUntrusted naming the URL", err)
	}
	// Mallory first, the cache key second: accepted (every Sig is tried).
	good, err := tc.sk.Sign(rand.Reader, ni.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	ni.Signatures = append(ni.Signatures, good)
	tc.write(t, cachelayout.NarinfoKey(sp), []byte(ni.String()))
	if _, err := c.Narinfo(ctx, sp); err != nil {
		t.Fatalf("second signature valid: %v", err)
	}
	// The cache's signature, but a changed NarSize: the fingerprint differs.
	ni.NarSize++
	ni.Signatures = ni.Signatures[1:]
	tc.write(t, cachelayout.NarinfoKey(sp), []byte(ni.String()))
	if _, err := c.Narinfo(ctx, sp); !errors.Is(err, cacheclient.ErrUntrusted) {
		t.Fatalf("edited narinfo: %v, want ErrUntrusted", err)
	}
	// No signature at all.
	ni.Signatures = nil
	tc.write(t, cachelayout.NarinfoKey(sp), []byte(ni.String()))
	if _, err := c.Narinfo(ctx, sp); !errors.Is(err, cacheclient.ErrUntrusted) {
		t.Fatalf("unsigned narinfo: %v, want ErrUntrusted", err)
	}
}

func TestNarinfoErrors(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	tc := newTestCache(t)
	c := tc.client(t)

	missing := randomStorePath("missing")
	if _, err := c.Narinfo(ctx, missing); !errors.Is(err, cacheclient.ErrNotFound) || !strings.Contains(err.Error(), tc.url+"/"+cachelayout.NarinfoKey(missing)) {
		t.Fatalf("missing: %v, want ErrNotFound with the URL", err)
	}
	for _, bad := range []string{"", "hello", "/nix/store/short-x", "/tmp/store/" + missing[len("/nix/store/"):], missing + "/bin", missing[:43] + ".hidden", missing[:43] + "-.hidden", missing + strings.Repeat("x", 211), "/nix/store/" + strings.Repeat("e", 32) + "-x"} {
		if _, err := c.Narinfo(ctx, bad); !errors.Is(err, cacheclient.ErrInvalidPath) {
			t.Errorf("Narinfo(%q): %v, want ErrInvalidPath", bad, err)
		}
	}

	// The narinfo under sp's hash names another path (same hash, other name).
	sp := randomStorePath("asked")
	narBytes := narOf(t, []byte("x"))
	other := sp[:len(sp)-len("asked")] + "other"
	tc.publish(t, other, narBytes, narBytes, "none")
	if _, err := c.Narinfo(ctx, sp); !errors.Is(err, cacheclient.ErrMismatch) {
		t.Fatalf("narinfo for another path: %v, want ErrMismatch", err)
	}

	// Garbage, an unknown key, an invalid reference, an oversized object.
	for name, body := range map[string]string{
		"garbage":       "this is not a narinfo\n",
		"no key":        "StorePath: " + sp + "\nFoo\n",
		"bad NarSize":   "StorePath: " + sp + "\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:" + strings.Repeat("0", 52) + "\nNarSize: -1\nReferences: \n",
		"bad reference": "StorePath: " + sp + "\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:" + strings.Repeat("0", 52) + "\nNarSize: 1\nReferences: ../../etc\n",
		"md5 NarHash":   "StorePath: " + sp + "\nURL: nar/x.nar\nCompression: none\nNarHash: md5:" + strings.Repeat("0", 32) + "\nNarSize: 1\nReferences: \n",
		"oversized":     strings.Repeat("References: \n", 400000),
	} {
		tc.write(t, cachelayout.NarinfoKey(sp), []byte(body))
		if _, err := c.Narinfo(ctx, sp); !errors.Is(err, cacheclient.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}
