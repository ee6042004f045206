package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/queue/server"
)

// startServer runs an embedded server for the test, on a random port with
// its store in a temporary directory. A server that does not start fails
// the test: these tests are the package's integration tests, never skipped.
func startServer(t testing.TB, cfg server.Config) *server.Server {
	t.Helper()
	return testnats.Embedded(t, cfg)
}

func connect(t testing.TB, url string, opts ...Option) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Connect(ctx, url, opts...)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// setup is a server with the streams in place and one connection to it.
func setup(t testing.TB) (*server.Server, *Conn) {
	t.Helper()
	s := startServer(t, server.Config{})
	c := connect(t, s.ClientURL())
	if err := c.EnsureStreams(context.Background(), StreamOptions{}); err != nil {
		t.Fatalf("EnsureStreams: %v", err)
	}
	return s, c
}

// onBothServers runs f as a subtest on the embedded server and on a
// Debian nats-server (2.9), each with the streams made.
func onBothServers(t *testing.T, f func(t *testing.T, c *Conn)) {
	t.Helper()
	_, embedded := setup(t)
	debian := connect(t, testnats.Start(t, t.TempDir(), "", false).URL)
	if err := debian.EnsureStreams(context.Background(), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*Conn{"embedded": embedded, "debian": debian} {
		t.Run(name, func(t *testing.T) { f(t, c) })
	}
}

// testResult is a valid result, distinct for each i.
func testResult(i int) *Result {
	sum := sha256.Sum256(fmt.Appendf(nil, "nar %d", i))
	h := hex.EncodeToString(sum[:])
	return &Result{
		Version: ResultVersion,
		Tenant:  "t1",
		Builder: "https://builder.example/b1",
		DrvPath: fmt.Sprintf("/nix/store/%032d-hello-%d.drv", i, i),
		System:  "x86_64-linux",
		Outputs: []Output{{
			Name:       "out",
			Path:       fmt.Sprintf("/nix/store/%032d-hello-%d", i, i),
			NarHash:    h,
			NarSize:    1234,
			StagingKey: StagingKey(h),
		}},
		Bundle: json.RawMessage(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`),
	}
}

func publishN(t testing.TB, c *Conn, n int) {
	t.Helper()
	for i := range n {
		if _, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(i)); err != nil {
			t.Fatalf("PublishResult %d: %v", i, err)
		}
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// consumerGoroutines lists the stacks of goroutines that belong to a
// Consumer: its workers, its watchers, the pulls they started. Counting
// all goroutines would not do: the in-process server starts its own for
// each consumer and stream.
func consumerGoroutines() []string {
	markers := []string{
		"provenix/queue.(*worker)",
		"provenix/queue.(*Conn).consume",
		"nats.go/jetstream.(*pullConsumer)",
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, m := range markers {
			if strings.Contains(g, m) {
				found = append(found, g)
				break
			}
		}
	}
	return found
}

// checkGoroutines fails if Consumer goroutines are still running once
// they had a few seconds to wind down.
func checkGoroutines(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		leaked := consumerGoroutines()
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
