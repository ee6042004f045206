package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testtls"
	"codeberg.org/provenix/provenix/queue"
)

func TestNewServer(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{StoreDir: "/x"}, ""},
		{"no store dir", Config{}, "StoreDir is required"},
		{"negative port", Config{StoreDir: "/x", Port: -1}, "out of range"},
		{"payload below results", Config{StoreDir: "/x", MaxPayload: MinPayload - 1}, "must exceed MaxResultSize"},
		{"payload ok", Config{StoreDir: "/x", MaxPayload: 8 << 20}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := checkNew(t, tt.cfg, tt.wantErr)
			if s == nil {
				return
			}
			if s.cfg.Host != "127.0.0.1" || s.cfg.MaxPayload == 0 {
				t.Errorf("defaults not filled: %+v", s.cfg)
			}
		})
	}
}

func TestServerOpenClose(t *testing.T) {
	s := startServer(t, Config{})
	if !strings.HasPrefix(s.ClientURL(), "nats://127.0.0.1:") || strings.HasSuffix(s.ClientURL(), ":0") {
		t.Fatalf("ClientURL = %q", s.ClientURL())
	}
	c := connect(t, s.ClientURL())
	if !c.NATS().IsConnected() {
		t.Fatal("not connected")
	}
	if _, err := c.JetStream().AccountInfo(testctx.New(t, 30*time.Second)); err != nil {
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
	if _, err := queue.Connect(ctx, url); !errors.Is(err, context.DeadlineExceeded) {
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
	s, err := New(Config{StoreDir: file})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Open(testctx.New(t, 30*time.Second))
	if err == nil {
		_ = s.Close(testctx.New(t, 30*time.Second))
		t.Fatal("Open succeeded with a file as StoreDir")
	}
	t.Logf("Open: %v", err)
	if !strings.Contains(err.Error(), "JetStream") {
		t.Errorf("err = %v, want it to name JetStream", err)
	}
}

func TestServerToken(t *testing.T) {
	s := startServer(t, Config{Token: "s3cret"})
	tests := []struct {
		name string
		opts []queue.Option
		ok   bool
	}{
		{"no token", nil, false},
		{"wrong token", []queue.Option{queue.WithToken("guess")}, false},
		{"right token", []queue.Option{queue.WithToken("s3cret"), queue.WithName("test")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			c, err := queue.Connect(ctx, s.ClientURL(), tt.opts...)
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

func TestNewServerListeners(t *testing.T) {
	cert := testtls.Write(t)
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"wss", Config{WebSocket: &WebSocketConfig{CertFile: cert.CertFile, KeyFile: cert.KeyFile}}, ""},
		{"ws without TLS on loopback", Config{WebSocket: &WebSocketConfig{NoTLSUnsafe: true}}, ""},
		{"ws without TLS on localhost", Config{WebSocket: &WebSocketConfig{Host: "localhost", NoTLSUnsafe: true}}, ""},
		{"ws without certificate", Config{WebSocket: &WebSocketConfig{}}, "certificate and key are required"},
		{"ws without TLS on all interfaces", Config{WebSocket: &WebSocketConfig{Host: "0.0.0.0", NoTLSUnsafe: true}}, "only on a loopback address"},
		{"ws without TLS inherits a public host", Config{Host: "0.0.0.0", WebSocket: &WebSocketConfig{NoTLSUnsafe: true}}, "only on a loopback address"},
		{"ws certificate without key", Config{WebSocket: &WebSocketConfig{CertFile: cert.CertFile}}, "both a certificate and a key"},
		{"ws both TLS and not", Config{WebSocket: &WebSocketConfig{CertFile: cert.CertFile, KeyFile: cert.KeyFile, NoTLSUnsafe: true}}, "exclusive"},
		{"ws port out of range", Config{WebSocket: &WebSocketConfig{Port: 70000, NoTLSUnsafe: true}}, "out of range"},
		{"leaf", Config{LeafNode: &LeafNodeConfig{}}, ""},
		{"leaf key without certificate", Config{LeafNode: &LeafNodeConfig{KeyFile: cert.KeyFile}}, "both a certificate and a key"},
		{"leaf dotted domain", Config{LeafNode: &LeafNodeConfig{Domain: "a.b"}}, "invalid name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.StoreDir = "/x"
			s := checkNew(t, tt.cfg, tt.wantErr)
			if s == nil {
				return
			}
			if ws := s.cfg.WebSocket; ws != nil && ws.Host == "" {
				t.Error("websocket host not defaulted")
			}
			if ln := s.cfg.LeafNode; ln != nil && (ln.Host == "" || ln.Domain != DefaultJetStreamDomain) {
				t.Errorf("leaf node defaults not filled: %+v", ln)
			}
		})
	}
	// A certificate that does not load fails Open with the file's error.
	s, err := New(Config{StoreDir: t.TempDir(), WebSocket: &WebSocketConfig{CertFile: cert.KeyFile, KeyFile: cert.KeyFile}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Open(testctx.New(t, 30*time.Second)); err == nil || !strings.Contains(err.Error(), "websocket TLS") {
		s.Close(testctx.New(t, 30*time.Second))
		t.Fatalf("Open with a key as certificate: %v", err)
	}
}

// checkNew is New(cfg), which must fail with an error containing wantErr
// (then checkNew returns nil) or, without wantErr, succeed.
func checkNew(t *testing.T, cfg Config, wantErr string) *Server {
	t.Helper()
	s, err := New(cfg)
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want %q", err, wantErr)
		}
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startServer runs a server for the test, on a random port with its
// store in a temporary directory; one that does not start fails the test.
func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Open(testctx.New(t, 30*time.Second)); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func connect(t testing.TB, url string, opts ...queue.Option) *queue.Conn {
	t.Helper()
	c, err := queue.Connect(testctx.New(t, 30*time.Second), url, opts...)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}
