//go:build linux

package cachepush

import (
	"crypto/rand"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/queue"
)

// TestPushNoSpace: the pusher, consuming from NATS, meets a cache disk with
// less space left than the NAR needs. It logs a clear error naming the
// cache directory, does not ack (the result is redelivered), leaves no
// narinfo, NAR, sidecar or temporary file behind, rejects nothing, and
// pushes the result once space is freed.
func TestPushNoSpace(t *testing.T) {
	disk := testfs.Tmpfs(t, 1<<20, 0)
	var logs testlog.Buffer
	cacheDir := filepath.Join(disk, "cache")
	f := newFixtureAt(t, cacheDir, slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := testctx.New(t, 60*time.Second)

	// A NAR that does not compress, twice the space left.
	const left = 128 << 10
	content := make([]byte, 2*left)
	rand.Read(content)
	r, _ := f.result(t, spec{name: "big", content: string(content)})
	filler := filepath.Join(disk, "filler")
	if err := os.WriteFile(filler, make([]byte, testfs.Free(t, disk)-left), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.pusher.Close(ctx) })
	if _, err := f.conn.PublishResult(ctx, r); err != nil {
		t.Fatal(err)
	}
	// Two failed deliveries: the first was not acked, it came back.
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(logs.String(), "cache store full") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no two 'cache store full' errors in 20s; log:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "cache store full") {
			line = l
			break
		}
	}
	if !strings.Contains(line, "level=ERROR") || !strings.Contains(line, store.ErrNoSpace.Error()) || !strings.Contains(line, cacheDir) {
		t.Fatalf("the error does not say the store is full and where: %s", line)
	}
	t.Log(line)
	if keys := f.keys(t, ""); len(keys) != 0 {
		t.Fatalf("after failed pushes the cache shows %v", keys)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		if _, err := f.store.Stat(ctx, cachelayout.NarinfoKey(r.Outputs[0].Path)); err == nil {
			break
		} else if !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("result not pushed 20s after space was freed; log:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.checkEntry(t, r)
	if tmp, err := os.ReadDir(filepath.Join(cacheDir, ".tmp")); err != nil || len(tmp) != 0 {
		t.Fatalf("temporary files left by the failed pushes: %v (%v)", tmp, err)
	}
	f.mu.Lock()
	for _, m := range f.events {
		if strings.HasSuffix(m.Subject, "."+queue.EventRejected) {
			t.Errorf("a full disk got the result rejected: %s", m.Data)
		}
	}
	f.mu.Unlock()
}
