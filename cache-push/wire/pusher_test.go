package wire

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/vsa"
)

// pusherParts are a real embedded NATS server with the streams, a local
// store, a policy and a cache key.
func pusherParts(t *testing.T) PusherOptions {
	t.Helper()
	ctx := t.Context()
	srv, err := natsserver.New(natsserver.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Open(ctx); err != nil {
		t.Fatalf("embedded NATS did not start: %v", err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	conn, err := queue.Connect(ctx, srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	if err := conn.EnsureStreams(ctx, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := attest.GenerateKeyFiles(filepath.Join(dir, "builder")); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse([]byte("tenants: [t1]\nsystems: [x86_64-linux]\nbuilders:\n  - {id: b, key: builder.pub}\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cachepush.GenerateKeyFiles("test-cache-1", filepath.Join(dir, "cache")); err != nil {
		t.Fatal(err)
	}
	key, err := cachepush.LoadKey(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := local.New(filepath.Join(dir, "cache-dir"))
	if err != nil {
		t.Fatal(err)
	}
	vk, err := attest.GenerateKeyFiles(filepath.Join(dir, "vsa"))
	if err != nil {
		t.Fatal(err)
	}
	vs, err := vsa.NewSigner(vsa.SignerOptions{Key: vk})
	if err != nil {
		t.Fatal(err)
	}
	return PusherOptions{Conn: conn, Store: st, Policy: pol, CacheKey: key, VSA: vs, Tenant: "t1", Group: "g"}
}

// TestStartPusher: the pusher it returns is open: it has written the
// cache's nix-cache-info and joined its group's durable consumer on the
// tenant's results, with the AckWait asked for.
func TestStartPusher(t *testing.T) {
	o := pusherParts(t)
	o.AckWait = 9 * time.Second
	pu, err := StartPusher(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{cachelayout.CacheInfoKey, cachelayout.PolicyKey, cachelayout.VerifierKey, cachelayout.VSAPublicKeyKey} {
		if _, err := o.Store.Stat(t.Context(), k); err != nil {
			t.Errorf("no %s after StartPusher: %v", k, err)
		}
	}
	c, err := o.Conn.JetStream().Consumer(t.Context(), queue.StreamResults, queue.ConsumerPrefix+"g")
	if err != nil {
		t.Fatalf("group consumer: %v", err)
	}
	ci, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if ci.Config.FilterSubject != queue.ResultsFilter("t1") || ci.Config.AckWait != o.AckWait {
		t.Errorf("consumer filters %q with ack wait %s, want %q and %s", ci.Config.FilterSubject, ci.Config.AckWait, queue.ResultsFilter("t1"), o.AckWait)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pu.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestStartPusherInvalid(t *testing.T) {
	good := pusherParts(t)
	for name, mod := range map[string]func(*PusherOptions){
		"no conn":           func(o *PusherOptions) { o.Conn = nil },
		"no store":          func(o *PusherOptions) { o.Store = nil },
		"no policy":         func(o *PusherOptions) { o.Policy = nil },
		"no VSA signer":     func(o *PusherOptions) { o.VSA = nil },
		"no tenant":         func(o *PusherOptions) { o.Tenant = "" },
		"no group":          func(o *PusherOptions) { o.Group = "" },
		"short ack wait":    func(o *PusherOptions) { o.AckWait = time.Second },
		"negative failures": func(o *PusherOptions) { o.MaxFailures = -1 },
	} {
		o := good
		mod(&o)
		if _, err := StartPusher(t.Context(), o); !errors.Is(err, ErrOptions) {
			t.Errorf("%s: %v, want ErrOptions", name, err)
		}
	}
}
