package main

// Firewalled builders (docs/firewalled-workers.md): a builder that may
// only dial out over HTTPS reaches `provenix up` over wss://, and a site's
// own nats-server (a leaf node, itself linked over wss://) relays its
// builders. Real Nix builds, a real nats-server leaf, stock nix
// substituting from the cache at the end.

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/internal/testtls"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/up"
)

// runUpCLI runs `provenix up` in-process with args until the test ends and
// returns its up.json once written, and its stdout so far.
func runUpCLI(t *testing.T, dir string, args ...string) (*up.Runtime, func() string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb testlog.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"up", "--data-dir", dir, "--listen", "127.0.0.1:0", "--log-level", "warn"}, args...),
			strings.NewReader(""), &out, &errb)
	}()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if rt, err := up.ReadRuntime(up.Paths{Dir: dir}); err == nil {
			return rt, out.String
		}
		select {
		case code := <-done:
			done <- code
			t.Fatalf("provenix up exited %d:\n%s\n%s", code, out.String(), errb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("provenix up wrote no up.json in 30s:\n%s\n%s", out.String(), errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFirewalledBuilderWebSocket: `provenix up --websocket-listen` with a
// self-signed certificate; `provenix build` gets only the wss:// URL, the
// CA file and the token, and its result reaches the cache.
func TestFirewalledBuilderWebSocket(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 2*time.Minute)
	cert := testtls.Write(t)
	dir := t.TempDir()
	rt, stdout := runUpCLI(t, dir, "--websocket-listen", "127.0.0.1:0",
		"--websocket-tls-cert", cert.CertFile, "--websocket-tls-key", cert.KeyFile)
	wss := rt.WebSocketURL
	if !strings.HasPrefix(wss, "wss://127.0.0.1:") || !strings.HasPrefix(rt.NATSURL, "nats://") {
		t.Fatalf("up.json: NATS %q, WebSocket %q", rt.NATSURL, wss)
	}
	if !strings.Contains(stdout(), "NATS over WebSocket "+wss) {
		t.Errorf("up does not print the wss URL:\n%s", stdout())
	}
	if out, _, code := cli(t, ctx, "up", "--status", "--json", "--data-dir", dir); code != 0 || !strings.Contains(out, `"websocketUrl": "`+wss+`"`) {
		t.Errorf("up --status --json: exit %d, no websocketUrl %s:\n%s", code, wss, out)
	}
	p := up.Paths{Dir: dir}
	natsArgs := func(token string, extra ...string) []string {
		return append([]string{"--data-dir", dir, "--nats-url", wss, "--nats-token-file", token}, extra...)
	}

	// The failures an operator meets first, each named, each before any
	// build: a wrong token, the self-signed certificate without its CA.
	sample := []string{"build", filepath.Join("..", "..", "examples", "hello.nix"), "-A", "hello", "--arg", "busybox=" + busybox}
	bad := filepath.Join(t.TempDir(), "bad.token")
	os.WriteFile(bad, []byte("not-the-token"), 0o600)
	start := time.Now()
	if _, stderr, code := cli(t, ctx, append(sample, natsArgs(bad, "--nats-ca", cert.CertFile)...)...); code != exitUsageErr || !strings.Contains(stderr, "Authorization Violation") {
		t.Errorf("build with a wrong token over wss: exit %d, want %d with an authorization violation\n%s", code, exitUsageErr, stderr)
	}
	if _, stderr, code := cli(t, ctx, append(sample, natsArgs(p.NATSToken())...)...); code != exitUsageErr ||
		!strings.Contains(stderr, "certificate not trusted") || !strings.Contains(stderr, "--nats-ca") {
		t.Errorf("build without the CA: exit %d, want %d naming the certificate and --nats-ca\n%s", code, exitUsageErr, stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the two refused connections took %s: they should fail at once, not retry", d)
	}

	pub := buildSample(t, ctx, busybox, natsArgs(p.NATSToken(), "--nats-ca", cert.CertFile)...)
	out := pub.Outputs[0]
	waitNarinfo(t, rt.CacheURL, out.Path)
	requireSubstitutes(t, ctx, rt.CacheURL, p.CachePub(), out)
}

// TestFirewalledSiteLeafNode: a site's nats-server (Debian's, no
// JetStream of its own) links to `provenix up` over wss:// only; a
// builder that knows nothing but the site server publishes, and its
// result reaches the cache.
func TestFirewalledSiteLeafNode(t *testing.T) {
	busybox := requireNix(t)
	testnats.Bin(t)
	ctx := testctx.New(t, 2*time.Minute)
	cert := testtls.Write(t)
	dir := t.TempDir()
	rt, stdout := runUpCLI(t, dir, "--websocket-listen", "127.0.0.1:0",
		"--websocket-tls-cert", cert.CertFile, "--websocket-tls-key", cert.KeyFile, "--leafnode-listen", "127.0.0.1:0")
	if !strings.HasPrefix(rt.LeafNodeURL, "nats-leaf://127.0.0.1:") || rt.JetStreamDomain != natsserver.DefaultJetStreamDomain {
		t.Fatalf("up.json: leaf %q, domain %q", rt.LeafNodeURL, rt.JetStreamDomain)
	}
	if !strings.Contains(stdout(), "leaf nodes "+rt.LeafNodeURL) {
		t.Errorf("up does not print the leaf node URL:\n%s", stdout())
	}
	p := up.Paths{Dir: dir}
	hubToken := readPub(t, p.NATSToken())
	siteURL := testnats.Leaf{
		Remote: testnats.WithUser(rt.WebSocketURL, natsserver.LeafNodeUser, hubToken), CAFile: cert.CertFile,
		Token: "site-token", Domain: rt.JetStreamDomain,
	}.Start(t)
	siteToken := filepath.Join(t.TempDir(), "site.token")
	os.WriteFile(siteToken, []byte("site-token"), 0o600)

	pub := buildSample(t, ctx, busybox, "--data-dir", dir, "--nats-url", siteURL, "--nats-token-file", siteToken)
	out := pub.Outputs[0]
	waitNarinfo(t, rt.CacheURL, out.Path)
	requireSubstitutes(t, ctx, rt.CacheURL, p.CachePub(), out)
}
