package queue

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsd "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue/server"
)

func TestPublishResult(t *testing.T) {
	_, c := setup(t)
	bad := testResult(9)
	bad.DrvPath = "not-a-drv"
	tests := []struct {
		name    string
		r       *Result
		wantDup bool
		wantErr error
	}{
		{"first", testResult(1), false, nil},
		{"same again", testResult(1), true, nil},
		{"another", testResult(2), false, nil},
		{"malformed", bad, false, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dup, err := c.PublishResult(testctx.New(t, 30*time.Second), tt.r)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if dup != tt.wantDup {
				t.Errorf("duplicate = %v, want %v", dup, tt.wantDup)
			}
		})
	}
	st, err := c.js.Stream(testctx.New(t, 30*time.Second), StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(testctx.New(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Errorf("RESULTS holds %d messages, want 2", info.State.Msgs)
	}
	m, err := st.GetLastMsgForSubject(testctx.New(t, 30*time.Second), "results.t1.x86_64-linux")
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(jetstream.MsgIDHeader); got != testResult(2).MsgID() {
		t.Errorf("Nats-Msg-Id = %q", got)
	}
	if _, err := DecodeResult(m.Data); err != nil {
		t.Errorf("stored message does not decode: %v", err)
	}
}

func TestPublishEvent(t *testing.T) {
	_, c := setup(t)
	tests := []struct {
		name    string
		tenant  string
		kind    string
		v       any
		wantErr error
	}{
		{"published", "t1", EventPublished, map[string]string{"path": "/nix/store/x"}, nil},
		{"bad kind", "t1", "a.b", nil, ErrInvalidName},
		{"bad tenant", "", EventRejected, nil, ErrInvalidName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.PublishEvent(testctx.New(t, 30*time.Second), tt.tenant, tt.kind, tt.v)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
	if err := c.PublishEvent(testctx.New(t, 30*time.Second), "t1", EventRejected, func() {}); err == nil {
		t.Error("unencodable event accepted")
	}
	st, err := c.js.Stream(testctx.New(t, 30*time.Second), StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(testctx.New(t, 30*time.Second), "events.t1.published")
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != `{"path":"/nix/store/x"}` {
		t.Errorf("event = %s", m.Data)
	}
}

func TestPublishWithoutStreams(t *testing.T) {
	s := startServer(t, server.Config{})
	c := connect(t, s.ClientURL())
	// No stream answering could be a leader election: PublishResult
	// retries until ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c.PublishResult(ctx, testResult(1)); err == nil {
		t.Fatal("published without a RESULTS stream")
	}
}

// TestPublishPermissionDenied: the server drops a publish its permissions
// deny and only says so asynchronously; PublishResult must report that,
// quickly, instead of timing out.
func TestPublishPermissionDenied(t *testing.T) {
	opts := &natsd.Options{
		Host:      "127.0.0.1",
		Port:      natsd.RANDOM_PORT,
		JetStream: true,
		StoreDir:  filepath.Join(t.TempDir(), "js"),
		NoSigs:    true,
		NoLog:     true,
		Users: []*natsd.User{
			{Username: "admin", Password: "pw"},
			{Username: "builder", Password: "pw", Permissions: &natsd.Permissions{
				Publish: &natsd.SubjectPermission{Allow: []string{"$JS.API.>", "_INBOX.>", "events.>"}, Deny: []string{"results.>"}},
			}},
			// May use the JetStream API but not write objects.
			{Username: "reader", Password: "pw", Permissions: &natsd.Permissions{
				Publish: &natsd.SubjectPermission{Allow: []string{"$JS.API.>", "_INBOX.>"}},
			}},
		},
	}
	ns, err := natsd.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	host := ns.Addr().String()
	admin := connect(t, "nats://admin:pw@"+host)
	if err := admin.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	builder := connect(t, "nats://builder:pw@"+host)

	start := time.Now()
	_, err = builder.PublishResult(context.Background(), testResult(1))
	if !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("err = %v, want ErrPermissionDenied", err)
	}
	if d := time.Since(start); d > DefaultTimeout/2 {
		t.Errorf("took %s: the denial was not detected, the publish timed out", d)
	}
	// Allowed publishes on the same connection are unaffected.
	if err := builder.PublishEvent(testctx.New(t, 30*time.Second), "t1", EventPublished, 1); err != nil {
		t.Errorf("allowed publish: %v", err)
	}

	reader := connect(t, "nats://reader:pw@"+host)
	start = time.Now()
	_, err = reader.Stage(context.Background(), "k", strings.NewReader("a NAR"))
	if !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("Stage: %v, want ErrPermissionDenied", err)
	}
	if d := time.Since(start); d > stageAckTimeout/2 {
		t.Errorf("Stage took %s: the denial was not detected", d)
	}
}

// TestPublishResultAcrossRestart: a result published while the broker is
// down (restarting on the same address and storage) is acked once it is
// back, past the first attempt's timeout, and the stream holds each result
// once. (A publish lost in flight by a killed broker, which only a retry
// saves, is TestCrashEmbedded's in cmd/provenix.)
func TestPublishResultAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := server.Config{StoreDir: dir, Port: testproc.FreePort(t)}
	s := startServer(t, cfg)
	c := connect(t, s.ClientURL())
	if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(0)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(testctx.New(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(1))
		done <- err
	}()
	time.Sleep(2500 * time.Millisecond) // past the first attempt's timeout
	startServer(t, cfg)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("publish across the restart: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("publish across the restart still waiting 20s after the broker came back")
	}
	if dup, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(1)); err != nil || !dup {
		t.Fatalf("publishing again: duplicate %v, %v", dup, err)
	}
	str, err := c.js.Stream(testctx.New(t, 30*time.Second), StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(testctx.New(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("RESULTS holds %d messages, want 2", info.State.Msgs)
	}
}

// TestPublishResultWaitsForStream: while no stream answers (a leader
// election, a server still recovering), PublishResult keeps trying instead
// of failing the build whose result it carries.
func TestPublishResultWaitsForStream(t *testing.T) {
	s := startServer(t, server.Config{})
	c := connect(t, s.ClientURL())
	done := make(chan error, 1)
	go func() {
		_, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(1))
		done <- err
	}()
	time.Sleep(1500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("PublishResult gave up while no stream answered: %v", err)
	default:
	}
	if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("publish once the stream exists: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("PublishResult still waiting 10s after the stream appeared")
	}
}
