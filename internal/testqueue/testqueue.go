// Package testqueue runs an embedded NATS server (queue/server) with the
// Provenix streams in place, for the tests of packages above queue. It is
// not part of internal/testnats: queue's own tests use testnats, and this
// package imports queue.
package testqueue

import (
	"context"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

// startTimeout bounds starting the server, connecting and creating the
// streams.
const startTimeout = 30 * time.Second

// Embedded starts an embedded NATS server from cfg (StoreDir defaults to
// a fresh temporary directory) until the test ends, connects to it and
// creates the streams with default StreamOptions. It fails the test,
// never skips, when any step fails. The connection is closed, and the
// server shut down, when the test ends.
func Embedded(t testing.TB, cfg natsserver.Config) (*natsserver.Server, *queue.Conn) {
	t.Helper()
	ctx := testctx.New(t, startTimeout)
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	s, err := natsserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Open(ctx); err != nil {
		t.Fatalf("embedded NATS did not start: %v", err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	c, err := queue.Connect(ctx, s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.EnsureStreams(ctx, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return s, c
}
