//go:build linux

package up

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testlog"
)

// TestStatusShowsDiskFull: when the data directory's disk fills up under
// the embedded JetStream, the server's error reaches up's log and /status
// says JetStream's storage is full, instead of the stack only timing out.
func TestStatusShowsDiskFull(t *testing.T) {
	dir := testfs.Tmpfs(t, 8<<20, 0)
	var logs testlog.Buffer
	s, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if st := s.Status(ctx); len(st.Errors) != 0 {
		t.Fatalf("status errors before the disk filled: %v", st.Errors)
	}
	testfs.Fill(t, dir, "filler")
	for i := 0; ; i++ {
		if i == 20 {
			t.Fatal("20 events published on a full disk")
		}
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		err := s.Conn().PublishEvent(pctx, DefaultTenant, "test", map[string]int{"i": i})
		pcancel()
		if err != nil {
			break
		}
	}
	st := s.Status(ctx)
	if !strings.Contains(strings.Join(st.Errors, "\n"), "JetStream storage full") {
		t.Fatalf("status on a full disk: errors %v", st.Errors)
	}
	if !strings.Contains(logs.String(), "no space left") {
		t.Fatalf("the embedded server's storage error is not in the log:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "Starting nats-server") {
		t.Fatalf("the embedded server's startup notices reached the log:\n%s", logs.String())
	}
	t.Log(st.Errors)
}
