package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	natsd "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"codeberg.org/provenix/provenix/internal/retry"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/internal/testtls"
	"codeberg.org/provenix/provenix/queue/server"
)

// stageAndPublish does what a builder does through c: stage a NAR, publish
// its result. It returns the staged bytes and the result.
func stageAndPublish(t testing.TB, c *Conn, seed uint64) ([]byte, *Result) {
	t.Helper()
	data := randomBytes(seed, 3*stageChunkSize+17) // several chunks
	key := narKey(data)
	if _, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(data)); err != nil {
		t.Fatalf("Stage: %v", err)
	}
	r := testResult(int(seed))
	r.Outputs[0].NarHash = strings.TrimPrefix(key, "nar/")
	r.Outputs[0].StagingKey = key
	r.Outputs[0].NarSize = uint64(len(data))
	if dup, err := c.PublishResult(testctx.New(t, 30*time.Second), r); err != nil || dup {
		t.Fatalf("PublishResult: duplicate %v, %v", dup, err)
	}
	return data, r
}

// requireArrived checks, from the hub's side, that the result is in the
// RESULTS stream and its NAR in the staging bucket.
func requireArrived(t testing.TB, hub *Conn, data []byte, r *Result) {
	t.Helper()
	subj, _ := ResultsSubject(r.Tenant, r.System)
	str, err := hub.JetStream().Stream(testctx.New(t, 30*time.Second), StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := str.GetLastMsgForSubject(testctx.New(t, 30*time.Second), subj)
	if err != nil {
		t.Fatalf("no result on %s: %v", subj, err)
	}
	got, err := DecodeResult(msg.Data)
	if err != nil || got.DrvPath != r.DrvPath {
		t.Fatalf("result in the stream: %+v, %v", got, err)
	}
	staged, _ := readStaged(t, hub, r.Outputs[0].StagingKey)
	if !bytes.Equal(staged, data) {
		t.Fatalf("staged NAR: %d bytes, want the %d staged", len(staged), len(data))
	}
}

// TestServerWebSocket: a builder that can only reach the wss:// listener
// stages and publishes; the server sees a TLS WebSocket client; wrong
// tokens, untrusted certificates and plain ws:// fail with errors that
// say why.
func TestServerWebSocket(t *testing.T) {
	cert := testtls.Write(t)
	s := startServer(t, server.Config{Token: "tok", WebSocket: &server.WebSocketConfig{CertFile: cert.CertFile, KeyFile: cert.KeyFile}})
	const retried = -1 // for fails: Connect retries until its ctx ends
	wsURL := s.WebSocketURL()
	if !strings.HasPrefix(wsURL, "wss://127.0.0.1:") || wsURL == "wss://127.0.0.1:0" {
		t.Fatalf("WebSocketURL = %q", wsURL)
	}
	if s.LeafNodeURL() != "" || s.JetStreamDomain() != "" {
		t.Fatalf("no leaf listener asked for, got %q (domain %q)", s.LeafNodeURL(), s.JetStreamDomain())
	}
	hub := connect(t, s.ClientURL(), WithToken("tok"))
	if err := hub.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}

	w := connect(t, wsURL, WithToken("tok"), WithRootCA(cert.CertFile), WithName("worker-wss"))
	if got := w.NATS().ConnectedUrl(); got != wsURL {
		t.Fatalf("connected to %q, want %q", got, wsURL)
	}
	data, r := stageAndPublish(t, w, 1)
	requireArrived(t, hub, data, r)
	cz, err := s.NATS().Connz(&natsd.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var seen bool
	for _, ci := range cz.Conns {
		if ci.Name == "worker-wss" {
			seen = true
			if ci.Type != "websocket" || ci.TLSVersion == "" {
				t.Errorf("worker connection: type %q, TLS %q; want a websocket over TLS", ci.Type, ci.TLSVersion)
			}
		}
	}
	if !seen {
		t.Fatal("the server does not list the worker's connection")
	}

	// fails connects with a ctx of 5 s, or of 1 s for retried failures,
	// and wants an error within the given time.
	fails := func(name, url string, within time.Duration, opts ...Option) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), max(5*time.Second, within))
		if within == retried {
			ctx, cancel = context.WithTimeout(context.Background(), time.Second)
			within = 2 * time.Second
		}
		defer cancel()
		start := time.Now()
		c, err := Connect(ctx, url, opts...)
		if err == nil {
			c.Close()
			t.Fatalf("%s: connected", name)
		}
		if d := time.Since(start); d > within {
			t.Errorf("%s: failed after %s, want within %s: %v", name, d, within, err)
		}
		return err
	}
	// Retrying fixes none of these: Connect gives up at once, well before
	// the 5 s its ctx would let retries run (a TLS WebSocket handshake
	// took 2.7 s once under CI's -race load, hence atOnce).
	const atOnce = 4 * time.Second
	if err := fails("wrong token", wsURL, atOnce, WithToken("bad"), WithRootCA(cert.CertFile)); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("wrong token: %v, want an authorization violation", err)
	}
	if err := fails("no CA", wsURL, atOnce, WithToken("tok")); !errors.Is(err, ErrUntrustedCert) || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("self-signed certificate without WithRootCA: %v, want %v", err, ErrUntrustedCert)
	}
	other := testtls.Write(t)
	if err := fails("other CA", wsURL, atOnce, WithToken("tok"), WithRootCA(other.CertFile)); !errors.Is(err, ErrUntrustedCert) {
		t.Errorf("another CA: %v, want %v", err, ErrUntrustedCert)
	}
	if err := fails("CA file missing", wsURL, time.Second, WithToken("tok"), WithRootCA(cert.CertFile+".missing")); !strings.Contains(err.Error(), "root CA") {
		t.Errorf("missing CA file: %v", err)
	}
	if err := fails("CA file not PEM", wsURL, time.Second, WithToken("tok"), WithRootCA(cert.KeyFile)); !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("key as CA file: %v", err)
	}
	// Plain ws:// to the TLS listener: retried (a proxy may be starting),
	// and the final error says what is wrong.
	plain := "ws://" + strings.TrimPrefix(wsURL, "wss://")
	if err := fails("plain ws", plain, retried, WithToken("tok")); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "use wss://") {
		t.Errorf("ws:// to a wss listener: %v, want a deadline with a hint to use wss://", err)
	}
	// The token stays out of the error when it is in the URL.
	if err := fails("token in URL", "wss://bad@"+strings.TrimPrefix(wsURL, "wss://"), atOnce, WithRootCA(cert.CertFile)); strings.Contains(err.Error(), "bad@") {
		t.Errorf("token in the error: %v", err)
	}
}

// TestServerWebSocketNoTLS: plain ws:// on loopback, for a reverse proxy
// that terminates TLS in front.
func TestServerWebSocketNoTLS(t *testing.T) {
	s := startServer(t, server.Config{Token: "tok", WebSocket: &server.WebSocketConfig{NoTLSUnsafe: true}})
	if !strings.HasPrefix(s.WebSocketURL(), "ws://127.0.0.1:") {
		t.Fatalf("WebSocketURL = %q", s.WebSocketURL())
	}
	c := connect(t, s.WebSocketURL(), WithToken("tok"))
	if _, err := c.JetStream().AccountInfo(testctx.New(t, 30*time.Second)); err != nil {
		t.Fatalf("JetStream over ws://: %v", err)
	}
}

// TestLeafNode: a site's nats-server (Debian's, no JetStream of its own)
// is a leaf of the embedded server, over the leaf node port and over
// wss://; a worker that only knows the leaf stages and publishes into the
// hub's streams. A leaf with a wrong password never links up.
func TestLeafNode(t *testing.T) {
	cert := testtls.Write(t)
	s := startServer(t, server.Config{Token: "tok",
		WebSocket: &server.WebSocketConfig{CertFile: cert.CertFile, KeyFile: cert.KeyFile},
		LeafNode:  &server.LeafNodeConfig{}})
	if !strings.HasPrefix(s.LeafNodeURL(), "nats-leaf://127.0.0.1:") || s.JetStreamDomain() != server.DefaultJetStreamDomain {
		t.Fatalf("LeafNodeURL = %q, domain %q", s.LeafNodeURL(), s.JetStreamDomain())
	}
	hub := connect(t, s.ClientURL(), WithToken("tok"))
	if err := hub.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name   string
		remote string
		ca     string
	}{
		{"leafnode port", s.LeafNodeURL(), ""},
		{"wss", s.WebSocketURL(), cert.CertFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leafURL := testnats.Leaf{
				Remote: testnats.WithUser(tc.remote, server.LeafNodeUser, "tok"), CAFile: tc.ca,
				Token: "site-tok", Domain: s.JetStreamDomain(),
			}.Start(t)
			w := connect(t, leafURL, WithToken("site-tok"))
			// The leaf reports its link before the hub's JetStream API
			// is reachable through it (interest still propagating): a
			// builder retries its staging then; here, wait for the API.
			waitJetStream(t, w)
			data, r := stageAndPublish(t, w, uint64(10+i))
			requireArrived(t, hub, data, r)
			// The worker reads its own staged NAR back through the leaf
			// too, as volunteers do with closures.
			if got, _ := readStaged(t, w, r.Outputs[0].StagingKey); !bytes.Equal(got, data) {
				t.Fatal("staged NAR read through the leaf differs")
			}
			// What volunteers do besides: read a vote from the hub's KV
			// and pull a rebuild request with an acknowledged consumer.
			key := fmt.Sprintf("vote-%d", i)
			if err := hub.KVPut(testctx.New(t, 30*time.Second), BucketVotes, key, []byte("yes")); err != nil {
				t.Fatal(err)
			}
			if v, err := w.KVGet(testctx.New(t, 30*time.Second), BucketVotes, key); err != nil || string(v) != "yes" {
				t.Fatalf("KVGet through the leaf: %q, %v", v, err)
			}
			system := fmt.Sprintf("sys%d-linux", i)
			got := make(chan string, 1)
			consumeRebuilds(t, w, system, func(_ context.Context, d *Delivery) error {
				got <- d.MsgID
				return nil
			})
			req := testRebuild(30+i, system)
			if _, err := hub.PublishRebuild(testctx.New(t, 30*time.Second), req); err != nil {
				t.Fatal(err)
			}
			select {
			case id := <-got:
				if id != req.MsgID() {
					t.Fatalf("rebuild delivered through the leaf: %q, want %q", id, req.MsgID())
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no rebuild request delivered through the leaf in 10s")
			}
			// The ack crossed back: the work queue drops the request.
			waitFor(t, 5*time.Second, "the acknowledged rebuild request to leave the stream", func() bool { return streamMsgs(t, hub) == 0 })
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		waitFor(t, 5*time.Second, "the earlier leaf nodes to go", func() bool { return s.NATS().NumLeafNodes() == 0 })
		leafURL := testnats.Leaf{
			Remote: testnats.WithUser(s.LeafNodeURL(), server.LeafNodeUser, "bad"),
			Token:  "site-tok", Domain: s.JetStreamDomain(), Unlinked: true,
		}.Start(t)
		w := connect(t, leafURL, WithToken("site-tok"))
		// A worker on a leaf without its link is told so, not left to
		// believe the result was stored: nothing acknowledges it.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r := testResult(20)
		if _, err := w.PublishResult(ctx, r); err == nil {
			t.Fatal("PublishResult through an unlinked leaf succeeded")
		} else {
			t.Logf("PublishResult through an unlinked leaf: %v", err)
		}
		if got := s.NATS().NumLeafNodes(); got != 0 {
			t.Fatalf("a leaf with a wrong password linked up (%d leaf nodes)", got)
		}
		subj, _ := ResultsSubject(r.Tenant, r.System)
		str, err := hub.JetStream().Stream(testctx.New(t, 30*time.Second), StreamResults)
		if err != nil {
			t.Fatal(err)
		}
		// Earlier results share the subject: compare the derivation.
		if msg, err := str.GetLastMsgForSubject(testctx.New(t, 30*time.Second), subj); err == nil {
			if got, _ := DecodeResult(msg.Data); got != nil && got.DrvPath == r.DrvPath {
				t.Fatal("the result reached the hub without a link")
			}
		}
	})
}

// TestLeafNodeListenerAddedLater: a leaf node listener names the
// JetStream (server.DefaultJetStreamDomain); turning it on for a store created
// without one keeps the streams and their messages.
func TestLeafNodeListenerAddedLater(t *testing.T) {
	dir := t.TempDir()
	for i, ln := range []*server.LeafNodeConfig{nil, {}} {
		s := startServer(t, server.Config{StoreDir: dir, LeafNode: ln})
		c := connect(t, s.ClientURL())
		if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
			t.Fatalf("run %d (domain %q): EnsureStreams: %v", i, s.JetStreamDomain(), err)
		}
		if i == 0 {
			publishN(t, c, 3)
		}
		str, err := c.JetStream().Stream(testctx.New(t, 30*time.Second), StreamResults)
		if err != nil {
			t.Fatal(err)
		}
		info, err := str.Info(testctx.New(t, 30*time.Second))
		if err != nil || info.State.Msgs != 3 {
			t.Fatalf("run %d (domain %q): %v messages, %v; want 3", i, s.JetStreamDomain(), info, err)
		}
		c.Close()
		if err := s.Close(testctx.New(t, 30*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
}

// waitJetStream waits up to 15 s for c's JetStream API to answer.
func waitJetStream(t *testing.T, c *Conn) {
	t.Helper()
	ctx := testctx.New(t, 15*time.Second)
	err := retry.Do(ctx, retry.Policy{Initial: 20 * time.Millisecond, Max: 500 * time.Millisecond}, func(int) error {
		_, err := c.JetStream().AccountInfo(ctx)
		return err
	})
	if err != nil {
		t.Fatalf("JetStream through the leaf: %v", err)
	}
}
