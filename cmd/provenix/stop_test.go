package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/up"
)

// TestStopWhileStarting: a pusher stopped (SIGTERM, Ctrl-C) while it
// still connects exits 0, as one stopped while it runs does: a service
// manager stopping it has nothing to report as a failure. (The cluster
// chaos test's pusher, restarted after a kill -9, still set up its
// consumer when the test stopped it, and exited 2.)
func TestStopWhileStarting(t *testing.T) {
	dir := t.TempDir()
	startStack(t, up.Config{DataDir: dir}) // the data dir's keys and policy
	ctx, cancel := context.WithCancel(testctx.New(t, time.Minute))
	defer cancel()
	time.AfterFunc(time.Second, cancel)
	start := time.Now()
	_, stderr, code := cli(t, ctx, "cache-push", "--data-dir", dir, "--nats-url", "nats://127.0.0.1:1", "--dir", filepath.Join(t.TempDir(), "cache"))
	if code != exitOK {
		t.Fatalf("exit %d, want %d:\n%s", code, exitOK, stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("stopped after %s", d)
	}
}
