package testqueue

import (
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

// TestEmbedded: the server serves, and the streams are in place (a
// publish on EVENTS is acknowledged only by an existing stream).
func TestEmbedded(t *testing.T) {
	s, c := Embedded(t, natsserver.Config{})
	if s.ClientURL() == "" {
		t.Fatal("no client URL")
	}
	if err := c.PublishEvent(testctx.New(t, 10*time.Second), "t1", "test", map[string]string{"ok": "yes"}); err != nil {
		t.Fatalf("PublishEvent: %v", err)
	}
}
