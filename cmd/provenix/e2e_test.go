package main

// End-to-end tests with real parts: the host's Nix builds, embedded or
// Debian's nats-server, stock nix substituting from the cache, cosign
// verifying our bundles. A missing tool fails the test with what to
// install; these tests are never skipped.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"go/build"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/up"
)

// requireNix fails the test without Nix and busybox; it returns busybox's
// resolved path for the sample's --arg busybox.
func requireNix(t testing.TB) string { return testnix.Busybox(t) }

// cli runs provenix in-process and returns its output and exit code.
func cli(t testing.TB, ctx context.Context, args ...string) (string, string, int) {
	t.Helper()
	var out, errb testlog.Buffer
	code := run(ctx, args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

func uniqueMessage(t testing.TB) string {
	b := make([]byte, 8)
	rand.Read(b)
	return t.Name() + "-" + hex.EncodeToString(b)
}

// startStack runs `up` in-process on dataDir.
func startStack(t testing.TB, cfg up.Config) *up.Stack {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	s, err := up.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Open(testctx.New(t, 30*time.Second)); err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// buildSample runs `provenix build --json` on the sample with a unique
// message, so Nix really builds, and returns the published result.
func buildSample(t testing.TB, ctx context.Context, busybox string, extra ...string) jsonPublished {
	t.Helper()
	wd, _ := os.Getwd()
	return buildFile(t, ctx, filepath.Join(wd, "..", "..", "examples", "hello.nix"), "hello", busybox, extra...)
}

// buildFile builds attr of a Nix file that takes busybox and message
// (examples/hello.nix, testdata/big.nix) with provenix build.
func buildFile(t testing.TB, ctx context.Context, file, attr, busybox string, extra ...string) jsonPublished {
	t.Helper()
	// --arg in Nix's two-token form, --argstr as NAME=VALUE: both are taken.
	args := append([]string{"build", "--json", file, "-A", attr, "--arg", "busybox", busybox,
		"--argstr", "message=" + uniqueMessage(t), "--nix-option", "substituters="}, extra...)
	stdout, stderr, code := cli(t, ctx, args...)
	if code != 0 {
		t.Fatalf("provenix build: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var pubs []jsonPublished
	if err := json.Unmarshal([]byte(stdout), &pubs); err != nil || len(pubs) != 1 || len(pubs[0].Outputs) != 1 {
		t.Fatalf("build --json output %q: %v", stdout, err)
	}
	return pubs[0]
}

// waitNarinfo polls the cache over HTTP until the narinfo of path appears.
func waitNarinfo(t testing.TB, cacheURL, path string) *narinfo.NarInfo {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(cacheURL + "/" + cachelayout.NarinfoKey(path))
		if err == nil && resp.StatusCode == http.StatusOK {
			ni, err := narinfo.Parse(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			return ni
		}
		if resp != nil {
			resp.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no narinfo for %s in %s after 30s", path, cacheURL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// substitute has stock nix fetch path from the cache into a fresh chroot
// store, trusting pubKey, and returns the client.
func substitute(t testing.TB, ctx context.Context, cacheURL, pubKey, path string) (*nix.Nix, error) {
	t.Helper()
	client := &nix.Nix{Root: t.TempDir(), Options: nix.SubstituteOptions(cacheURL, pubKey)}
	_, err := client.Realise(ctx, path)
	return client, err
}

// requireSubstitutes has stock nix substitute out from the cache into a
// fresh chroot store, trusting only the cache key in cachePubFile, and
// checks the restored NAR hash is the attested one.
func requireSubstitutes(t testing.TB, ctx context.Context, cacheURL, cachePubFile string, out jsonOutput) {
	t.Helper()
	client, err := substitute(t, ctx, cacheURL, readPub(t, cachePubFile), out.Path)
	if err != nil {
		t.Fatalf("stock nix did not substitute %s from %s: %v", out.Path, cacheURL, err)
	}
	infos, err := client.PathInfo(ctx, out.Path)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(infos[0].NarHash[:]); got != out.NarSHA256 {
		t.Fatalf("restored NAR sha256 %s, attested %s", got, out.NarSHA256)
	}
}

func readPub(t testing.TB, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestDemo runs the README's main command.
func TestDemo(t *testing.T) {
	requireNix(t)
	dir := t.TempDir()
	stdout, stderr, code := cli(t, testctx.New(t, 3*time.Minute), "demo", "--data-dir", dir, "--log-level", "warn")
	if code != 0 || !strings.Contains(stdout, "demo passed") || !strings.Contains(stdout, "verdict: verified") {
		t.Fatalf("demo: exit %d\n%s\n%s", code, stdout, stderr)
	}
	for _, f := range []string{"keys/builder", "keys/builder.pub", "keys/cache", "keys/cache.pub", "policy.yaml", "cache/nar"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("demo left no %s: %v", f, err)
		}
	}
}

func TestEndToEndEmbedded(t *testing.T) {
	busybox := requireNix(t)
	cosign := testproc.Tool(t, "cosign", "go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3", filepath.Join(build.Default.GOPATH, "bin", "cosign"))
	ctx := testctx.New(t, 5*time.Minute)
	dir := t.TempDir()
	stack := startStack(t, up.Config{DataDir: dir})
	p := stack.Paths()

	pub := buildSample(t, ctx, busybox, "--data-dir", dir)
	out := pub.Outputs[0]
	ni := waitNarinfo(t, stack.CacheURL(), out.Path)
	if ni.NarSize != out.NarSize {
		t.Fatalf("narinfo NarSize %d, attested %d", ni.NarSize, out.NarSize)
	}

	requireSubstitutes(t, ctx, stack.CacheURL(), p.CachePub(), out)

	// verify: from the cache (policy of the data dir), from the local
	// store with the sidecar's bundle, and with an untrusted key.
	stdout, stderr, code := cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(), out.Path)
	if code != 0 || !strings.Contains(stdout, "verified") {
		t.Fatalf("verify --cache: exit %d\n%s\n%s", code, stdout, stderr)
	}
	sc, err := os.ReadFile(filepath.Join(p.Cache(), cachelayout.ProvenanceKey(out.Path)))
	if err != nil {
		t.Fatal(err)
	}
	prov, err := cachelayout.ParseProvenance(sc)
	if err != nil {
		t.Fatal(err)
	}
	bundleFile := filepath.Join(t.TempDir(), "hello.bundle.json")
	if err := os.WriteFile(bundleFile, prov.Bundles[0], 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code = cli(t, ctx, "verify", "--json", "--key", p.BuilderPub(), "--bundle", bundleFile, out.Path)
	var rep report
	if code != 0 || json.Unmarshal([]byte(stdout), &rep) != nil || !rep.Verified || rep.NarSHA256 != out.NarSHA256 {
		t.Fatalf("verify local path: exit %d\n%s\n%s", code, stdout, stderr)
	}
	// A NAR file with its bundle; a truncated one is not verified.
	narFile := filepath.Join(t.TempDir(), "hello.nar")
	dump, err := exec.CommandContext(ctx, "nix-store", "--dump", out.Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(narFile, dump, 0o644)
	if stdout, stderr, code := cli(t, ctx, "verify", "--key", p.BuilderPub(), "--bundle", bundleFile, "--store-path", out.Path, narFile); code != 0 {
		t.Fatalf("verify NAR file: exit %d\n%s\n%s", code, stdout, stderr)
	}
	os.WriteFile(narFile, dump[:len(dump)/2], 0o644)
	if stdout, _, code := cli(t, ctx, "verify", "--key", p.BuilderPub(), "--bundle", bundleFile, "--store-path", out.Path, narFile); code != exitFailed || !strings.Contains(stdout, "digest mismatch") {
		t.Fatalf("verify truncated NAR file: exit %d, want %d with a digest mismatch\n%s", code, exitFailed, stdout)
	}

	otherDir := t.TempDir()
	if _, _, code := cli(t, ctx, "key", "generate", "--builder", filepath.Join(otherDir, "k")); code != 0 {
		t.Fatal("key generate failed")
	}
	if _, _, code = cli(t, ctx, "verify", "--key", filepath.Join(otherDir, "k.pub"), "--bundle", bundleFile, out.Path); code != exitFailed {
		t.Fatalf("verify with an untrusted key: exit %d, want %d", code, exitFailed)
	}
	if _, _, code = cli(t, ctx, "verify", "--key", p.BuilderPub(), out.Path); code != exitUsageErr {
		t.Fatalf("verify without a bundle source: exit %d, want %d", code, exitUsageErr)
	}

	// cosign, an independent verifier, accepts our bundle; not with another key.
	cosignVerify := func(key string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, cosign, "verify-blob-attestation", "--bundle", bundleFile, "--key", key,
			"--type", "slsaprovenance1", "--insecure-ignore-tlog", "--digest", out.NarSHA256, "--digestAlg", "sha256")
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		return cmd.CombinedOutput()
	}
	if b, err := cosignVerify(p.BuilderPub()); err != nil {
		t.Fatalf("cosign rejected our bundle: %v\n%s", err, b)
	}
	if b, err := cosignVerify(filepath.Join(otherDir, "k.pub")); err == nil {
		t.Fatalf("cosign accepted our bundle with another key:\n%s", b)
	}

	// A narinfo signed by another cache key: stock nix refuses it (asserted
	// with nix-store -r, which cannot fall back to building), and so does
	// verify --cache-key.
	sk, _, err := signature.GenerateKeypair("mallory-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ni.Signatures = nil
	sig, err := sk.Sign(rand.Reader, ni.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	ni.Signatures = append(ni.Signatures, sig)
	if err := os.WriteFile(filepath.Join(p.Cache(), cachelayout.NarinfoKey(out.Path)), []byte(ni.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	client, err := substitute(t, ctx, stack.CacheURL(), readPub(t, p.CachePub()), out.Path)
	if err == nil {
		t.Fatal("stock nix substituted a narinfo not signed by the cache key")
	}
	if _, err := os.Stat(client.RealPath(out.Path)); !os.IsNotExist(err) {
		t.Fatalf("refused path exists in the client store: %v", err)
	}
	if _, _, code = cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(), out.Path); code != exitFailed {
		t.Fatalf("verify --cache-key of a re-signed narinfo: exit %d, want %d", code, exitFailed)
	}
}

// TestEndToEndExternalNATS runs the same path against a separate
// nats-server process (Debian's package).
func TestEndToEndExternalNATS(t *testing.T) {
	busybox := requireNix(t)
	natsBin := testnats.Bin(t)
	ctx := testctx.New(t, 5*time.Minute)

	port := testproc.FreePort(t)
	srv := exec.Command(natsBin, "-js", "-sd", t.TempDir(), "-a", "127.0.0.1", "-p", fmt.Sprint(port))
	var srvLog bytes.Buffer
	srv.Stdout, srv.Stderr = &srvLog, &srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)

	dir := t.TempDir()
	stack := startStack(t, up.Config{DataDir: dir, NATSURL: url})
	pub := buildSample(t, ctx, busybox, "--data-dir", dir, "--nats-url", url)
	out := pub.Outputs[0]
	waitNarinfo(t, stack.CacheURL(), out.Path)
	client, err := substitute(t, ctx, stack.CacheURL(), readPub(t, stack.Paths().CachePub()), out.Path)
	if err != nil {
		t.Fatalf("stock nix did not substitute: %v\nnats-server log:\n%s", err, srvLog.String())
	}
	infos, err := client.PathInfo(ctx, out.Path)
	if err != nil || hex.EncodeToString(infos[0].NarHash[:]) != out.NarSHA256 {
		t.Fatalf("restored NAR: %v %+v", err, infos)
	}
	if stdout, stderr, code := cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), out.Path); code != 0 {
		t.Fatalf("verify: exit %d\n%s\n%s", code, stdout, stderr)
	}
}
