package testnats

import (
	"context"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue/server"
)

// embeddedWait bounds the embedded server's start and its shutdown.
const embeddedWait = 30 * time.Second

// Embedded runs Provenix's embedded NATS server (queue/server) from cfg
// until the test ends: on a random port unless cfg says otherwise, its
// store in a fresh temporary directory when cfg.StoreDir is empty. A
// server that does not start, or does not shut down cleanly, fails the
// test: it is never skipped. (queue/server's own tests cannot use it.)
func Embedded(t testing.TB, cfg server.Config) *server.Server {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	if err := s.Open(testctx.New(t, embeddedWait)); err != nil {
		t.Fatalf("embedded NATS did not start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), embeddedWait)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("embedded NATS: close: %v", err)
		}
	})
	return s
}
