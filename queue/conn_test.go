package queue

import (
	"context"
	"testing"

	"codeberg.org/provenix/provenix/queue/server"
)

// TestServerFitsMessages: the embedded server accepts every message this
// client sends (queue/server does not import queue, so the limit is
// restated there as MinPayload).
func TestServerFitsMessages(t *testing.T) {
	if server.MinPayload <= MaxResultSize+resultHeaderAllowance {
		t.Errorf("server.MinPayload %d does not exceed MaxResultSize %d plus %d bytes of headers", server.MinPayload, MaxResultSize, resultHeaderAllowance)
	}
	if server.MinPayload < stageChunkSize+4096 {
		t.Errorf("server.MinPayload %d is below the staging chunk size %d plus headers", server.MinPayload, stageChunkSize)
	}
	if server.MinPayload <= MaxRebuildSize+resultHeaderAllowance {
		t.Errorf("server.MinPayload %d does not exceed MaxRebuildSize %d plus headers", server.MinPayload, MaxRebuildSize)
	}
}

func TestConnectOptions(t *testing.T) {
	if _, err := Connect(context.Background(), "nats://127.0.0.1:1", WithToken("a"), WithCredsFile("/x")); err == nil {
		t.Fatal("token and creds file together accepted")
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://user:pass@host:4222", "nats://user:xxxxx@host:4222"},
		{"nats://tok@host:4222", "nats://xxxxx@host:4222"},
		{"nats://a:b@h1, nats://h2", "nats://a:xxxxx@h1,nats://h2"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	for attempt := range 20 {
		d := backoff(attempt)
		if d <= 0 || d > connectBackoffMax*5/4 {
			t.Errorf("backoff(%d) = %s", attempt, d)
		}
	}
}
