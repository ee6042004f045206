package queue

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestNewServer(t *testing.T) {
	tests := []struct {
		name    string
		cfg     ServerConfig
		wantErr string
	}{
		{"defaults", ServerConfig{StoreDir: "/x"}, ""},
		{"no store dir", ServerConfig{}, "StoreDir is required"},
		{"negative port", ServerConfig{StoreDir: "/x", Port: -1}, "out of range"},
		{"payload below results", ServerConfig{StoreDir: "/x", MaxPayload: MaxResultSize}, "must exceed MaxResultSize"},
		{"payload ok", ServerConfig{StoreDir: "/x", MaxPayload: 8 << 20}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewServer(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.cfg.Host != "127.0.0.1" || s.cfg.MaxPayload == 0 {
				t.Errorf("defaults not filled: %+v", s.cfg)
			}
		})
	}
}

func TestServerOpenClose(t *testing.T) {
	s := startServer(t, ServerConfig{})
	if !strings.HasPrefix(s.ClientURL(), "nats://127.0.0.1:") || strings.HasSuffix(s.ClientURL(), ":0") {
		t.Fatalf("ClientURL = %q", s.ClientURL())
	}
	c := connect(t, s.ClientURL())
	if !c.NATS().IsConnected() {
		t.Fatal("not connected")
	}
	if _, err := c.JetStream().AccountInfo(ctxT(t)); err != nil {
		t.Fatalf("JetStream not enabled: %v", err)
	}
	url := s.ClientURL()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Nothing listens any more: Connect retries until its ctx ends.
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Connect(ctx, url); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect after Close: %v, want deadline exceeded", err)
	}
}

func TestServerOpenFails(t *testing.T) {
	// A store "directory" that is a file: JetStream cannot start, and Open
	// must say so rather than hang or report a bare timeout.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(ServerConfig{StoreDir: file})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Open(ctxT(t))
	if err == nil {
		_ = s.Close(ctxT(t))
		t.Fatal("Open succeeded with a file as StoreDir")
	}
	t.Logf("Open: %v", err)
	if !strings.Contains(err.Error(), "JetStream") {
		t.Errorf("err = %v, want it to name JetStream", err)
	}
}

func TestServerToken(t *testing.T) {
	s := startServer(t, ServerConfig{Token: "s3cret"})
	tests := []struct {
		name string
		opts []Option
		ok   bool
	}{
		{"no token", nil, false},
		{"wrong token", []Option{WithToken("guess")}, false},
		{"right token", []Option{WithToken("s3cret"), WithName("test")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			c, err := Connect(ctx, s.ClientURL(), tt.opts...)
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("connected without the right token")
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("err = %v, want authorization violation", err)
			}
			// Refused at once, not retried until the deadline.
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("refusal took %s", d)
			}
		})
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
