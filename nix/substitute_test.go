package nix

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testnix"
)

// TestSubstituteOptionsIgnoreNarinfoDiskCache is the regression test for a
// CI failure: Nix remembers narinfos per cache URL in ~/.cache/nix, so a
// second cache on a reused 127.0.0.1 port, signing the same store path with
// another key, was answered from the first cache's narinfo ("not signed by
// any of the keys in trusted-public-keys"). Two binary caches with different
// keys are served in turn on one address; a fresh client store must
// substitute from each.
func TestSubstituteOptionsIgnoreNarinfoDiskCache(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // this test's own narinfo disk cache
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src, path := builtPath(t, ctx)

	dirA, pubA := signedCache(t, ctx, src, path, "cache-a-1")
	dirB, pubB := signedCache(t, ctx, src, path, "cache-b-1")

	addr := "127.0.0.1:0"
	for i, c := range []struct{ dir, pub string }{{dirA, pubA}, {dirB, pubB}} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String() // the second cache reuses the first one's address
		srv := &http.Server{Handler: http.FileServer(http.Dir(c.dir))}
		go srv.Serve(ln)
		client := &Nix{Root: t.TempDir(), Options: SubstituteOptions("http://"+addr, c.pub)}
		_, err = client.Realise(ctx, path)
		srv.Close()
		if err != nil {
			t.Fatalf("cache %d on http://%s: %v", i, addr, err)
		}
	}
}

// TestPrivateNarinfoCache: a call with PrivateNarinfoCache does not use
// the narinfo disk cache the others share, so what another command
// looked up before a path was published (a negative answer Nix keeps
// for an hour) does not hide it, and commands substituting at once do
// not open one cache database together (Nix 2.8 replaces the cache's
// row on open, and the other's insert fails with "constraint failed").
func TestPrivateNarinfoCache(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // the shared narinfo disk cache
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src, path := builtPath(t, ctx)
	dir, pub := signedCache(t, ctx, src, path, "private-1")
	// Until published, the cache has its nix-cache-info only.
	var published atomic.Bool
	files := http.FileServer(http.Dir(dir))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !published.Load() && r.URL.Path != "/nix-cache-info" {
			http.NotFound(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	// Nix's default narinfo TTLs (no SubstituteOptions): a negative
	// answer is kept for an hour.
	client := &Nix{Root: t.TempDir(), Options: map[string]string{"substituters": "http://" + ln.Addr().String(),
		"trusted-public-keys": pub, "build-users-group": ""}}
	if _, err := client.Realise(ctx, path); err == nil {
		t.Fatal("substituted a path the cache does not have")
	}
	published.Store(true)
	if _, err := client.Realise(ctx, path); err == nil {
		t.Skip("this Nix asked the cache again despite its negative answer: nothing to show")
	}
	if _, err := client.RealiseWith(ctx, RealiseOptions{PrivateNarinfoCache: true}, path); err != nil {
		t.Fatalf("with a private narinfo cache, after the path was published: %v", err)
	}
}

// builtPath builds the sample into a chroot store of its own and returns
// that store's Nix and the output: an input-addressed path (Nix accepts
// content-addressed ones unsigned).
func builtPath(t *testing.T, ctx context.Context) (*Nix, string) {
	t.Helper()
	opts := OfflineOptions()
	opts["sandbox"] = "false"
	src := &Nix{Root: t.TempDir(), Options: opts}
	drvs, err := src.Instantiate(ctx, "../examples/hello.nix", "hello", map[string]string{"busybox": testnix.Busybox(t)},
		map[string]string{"message": t.Name() + time.Now().String()})
	if err != nil {
		t.Fatal(err)
	}
	outs, err := src.Realise(ctx, drvs[0])
	if err != nil {
		t.Fatal(err)
	}
	return src, outs[0]
}

// signedCache writes a file:// binary cache of src's path signed by a new
// key named name, and returns its directory and public key.
func signedCache(t *testing.T, ctx context.Context, src *Nix, path, name string) (dir, pub string) {
	t.Helper()
	keys := t.TempDir()
	sk, pk := filepath.Join(keys, "sk"), filepath.Join(keys, "pk")
	if b, err := exec.CommandContext(ctx, "nix-store", "--generate-binary-cache-key", name, sk, pk).CombinedOutput(); err != nil {
		t.Fatalf("generate key: %v\n%s", err, b)
	}
	dir = t.TempDir()
	if _, err := src.run(ctx, "nix", src.args("copy", "--to", "file://"+dir+"?secret-key="+sk, path)...); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pk)
	if err != nil {
		t.Fatal(err)
	}
	return dir, strings.TrimSpace(string(b))
}
