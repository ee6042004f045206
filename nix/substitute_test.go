package nix

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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

	// cache writes a file:// binary cache of path signed by a new key.
	cache := func(name string) (dir, pub string) {
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
	dirA, pubA := cache("cache-a-1")
	dirB, pubB := cache("cache-b-1")

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
	keys := t.TempDir()
	sk, pk := filepath.Join(keys, "sk"), filepath.Join(keys, "pk")
	if b, err := exec.CommandContext(ctx, "nix-store", "--generate-binary-cache-key", "private-1", sk, pk).CombinedOutput(); err != nil {
		t.Fatalf("generate key: %v\n%s", err, b)
	}
	pub, err := os.ReadFile(pk)
	if err != nil {
		t.Fatal(err)
	}
	full := t.TempDir()
	if _, err := src.run(ctx, "nix", src.args("copy", "--to", "file://"+full+"?secret-key="+sk, path)...); err != nil {
		t.Fatal(err)
	}
	// The cache before the path is published: its nix-cache-info only.
	empty := t.TempDir()
	info, err := os.ReadFile(filepath.Join(full, "nix-cache-info"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(empty, "nix-cache-info"), info, 0o644); err != nil {
		t.Fatal(err)
	}
	var dir atomicDir
	dir.set(empty)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.FileServer(http.Dir(dir.get())).ServeHTTP(w, r)
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
		"trusted-public-keys": strings.TrimSpace(string(pub)), "build-users-group": ""}}
	if _, err := client.Realise(ctx, path); err == nil {
		t.Fatal("substituted a path the cache does not have")
	}
	dir.set(full) // published
	if _, err := client.Realise(ctx, path); err == nil {
		t.Log("the shared cache did not keep the negative answer: this Nix re-asks")
	}
	if _, err := client.RealiseWith(ctx, RealiseOptions{PrivateNarinfoCache: true}, path); err != nil {
		t.Fatalf("with a private narinfo cache, after the path was published: %v", err)
	}
}

type atomicDir struct {
	mu  sync.Mutex
	dir string
}

func (d *atomicDir) set(s string) { d.mu.Lock(); d.dir = s; d.mu.Unlock() }
func (d *atomicDir) get() string  { d.mu.Lock(); defer d.mu.Unlock(); return d.dir }

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
