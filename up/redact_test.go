package up

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testnats"
)

// TestStatusRedactsNATSCredentials: `up --nats-url nats://user:pass@host`
// used to hand the password to anyone who could GET /status on the cache
// listener, and to print it in its start-up log (issue 11, finding 2).
func TestStatusRedactsNATSCredentials(t *testing.T) {
	const password = "s3cret-nats-password"
	srv := testnats.Start(t, t.TempDir(), `authorization: {users: [{user: pusher, password: "`+password+`"}]}`, false)
	var logs testlog.Buffer
	s, err := New(Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0",
		NATSURL: testnats.WithUser(srv.URL, "pusher", password),
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())

	body := scrape(t, s.StatusURL())
	if strings.Contains(body, password) {
		t.Errorf("/status shows the NATS password:\n%s", body)
	}
	if !strings.Contains(body, "pusher:xxxxx@127.0.0.1") {
		t.Errorf("/status should still name the server and user:\n%s", body)
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("the log shows the NATS password:\n%s", logs.String())
	}
}
