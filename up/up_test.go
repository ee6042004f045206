package up

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/policy"
)

func TestInitKeepsExistingFiles(t *testing.T) {
	p := Paths{Dir: t.TempDir()}
	created, err := Init(p)
	if err != nil || len(created) != 8 {
		t.Fatalf("first Init created %v, %v", created, err)
	}
	before, _ := os.ReadFile(p.BuilderKey())
	created, err = Init(p)
	if err != nil || len(created) != 0 {
		t.Fatalf("second Init created %v, %v", created, err)
	}
	after, _ := os.ReadFile(p.BuilderKey())
	if !bytes.Equal(before, after) {
		t.Fatal("Init replaced the builder key")
	}
	for _, f := range []string{p.BuilderKey(), p.CacheKey(), p.VSAKey(), p.NATSToken()} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", f, fi.Mode().Perm(), err)
		}
	}
	// The generated pieces fit together.
	if _, err := attest.LoadSigner(p.BuilderKey()); err != nil {
		t.Fatal(err)
	}
	if _, err := cachepush.LoadKey(p.CacheKey()); err != nil {
		t.Fatal(err)
	}
	if _, err := attest.LoadSigner(p.VSAKey()); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Load(p.Policy())
	if err != nil {
		t.Fatal(err)
	}
	if len(pol.Builders) != 1 || pol.Builders[0].ID != DefaultBuilderID {
		t.Fatalf("default policy builders: %+v", pol.Builders)
	}
}

func TestReadRuntime(t *testing.T) {
	p := Paths{Dir: t.TempDir()}
	if _, err := ReadRuntime(p); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("no up.json: %v", err)
	}
	write := func(pid int) {
		b, _ := json.Marshal(Runtime{PID: pid, NATSURL: "nats://127.0.0.1:1"})
		if err := os.WriteFile(p.Runtime(), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(os.Getpid())
	if rt, err := ReadRuntime(p); err != nil || rt.NATSURL != "nats://127.0.0.1:1" {
		t.Fatalf("live pid: %+v, %v", rt, err)
	}
	write(1 << 30) // no such process
	if _, err := ReadRuntime(p); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("dead pid: %v", err)
	}
}

// TestStackOpenClose starts and stops the embedded stack twice on one data
// directory: the second start reuses keys, streams and cache.
func TestStackOpenClose(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 2; i++ {
		s, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := s.Open(ctx); err != nil {
			cancel()
			t.Fatalf("open %d: %v", i, err)
		}
		rt, err := ReadRuntime(s.Paths())
		if err != nil || rt.NATSURL != s.NATSURL() || rt.CacheURL != s.CacheURL() {
			t.Fatalf("up.json: %+v, %v", rt, err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatalf("close %d: %v", i, err)
		}
		cancel()
		if _, err := os.Stat(s.Paths().Runtime()); !os.IsNotExist(err) {
			t.Fatalf("up.json left after Close: %v", err)
		}
	}
}

// TestStackListenerConfig: the extra listeners' settings that cannot work
// are refused with a reason before anything listens.
func TestStackListenerConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"external NATS", Config{NATSURL: "nats://127.0.0.1:1", WebSocketListen: "127.0.0.1:0", WebSocketNoTLS: true}, "belong to the embedded NATS server"},
		{"external NATS leaf", Config{NATSURL: "nats://127.0.0.1:1", LeafNodeListen: "127.0.0.1:0"}, "belong to the embedded NATS server"},
		{"cert without listener", Config{WebSocketCert: "c.pem", WebSocketKey: "k.pem"}, "need a websocket listen address"},
		{"leaf cert without listener", Config{LeafNodeCert: "c.pem"}, "need a leaf node listen address"},
		{"bad websocket address", Config{WebSocketListen: "443"}, "websocket listen address"},
		{"bad leaf port", Config{LeafNodeListen: "127.0.0.1:x"}, "port must be a number"},
		{"ws without TLS in public", Config{WebSocketListen: "0.0.0.0:0", WebSocketNoTLS: true}, "only on a loopback address"},
		{"ws without certificate", Config{WebSocketListen: "127.0.0.1:0"}, "certificate and key are required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.DataDir, tc.cfg.Listen = t.TempDir(), "127.0.0.1:0"
			s, err := New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = s.Open(ctx)
			if err == nil {
				s.Close(ctx)
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(s.Paths().Runtime()); !os.IsNotExist(err) {
				t.Fatalf("up.json written by a refused start: %v", err)
			}
		})
	}
}

// TestStackServesRegistry: the stack's cache listener serves the OCI
// registry under /v2/.
func TestStackServesRegistry(t *testing.T) {
	s, err := New(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	resp, err := http.Get(s.CacheURL() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("/v2/: %d %v", resp.StatusCode, resp.Header)
	}
	resp, err = http.Get(s.CacheURL() + "/v2/nix/00000000000000000000000000000000-x/manifests/latest")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("an unpublished path: %d", resp.StatusCode)
	}
}
