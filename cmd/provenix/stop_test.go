package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/up"
)

// TestStopWhileStarting: a service stopped (SIGTERM, Ctrl-C) while it
// still connects exits 0, as one stopped while it runs does: a service
// manager stopping it has nothing to report as a failure. (The cluster
// chaos test's pusher, restarted after a kill -9, still set up its
// consumer when the test stopped it, and exited 2.)
func TestStopWhileStarting(t *testing.T) {
	dir := t.TempDir()
	startStack(t, up.Config{DataDir: dir}) // the data dir's keys and policy
	nowhere := []string{"--data-dir", dir, "--nats-url", "nats://127.0.0.1:1"}
	for _, args := range [][]string{
		{"cache-push", "--dir", filepath.Join(t.TempDir(), "cache")},
		{"volunteer", "--system", "x86_64-linux"},
		{"cache", "serve", "--dir", filepath.Join(t.TempDir(), "cache"), "--listen", "127.0.0.1:0", "--usage-tenant", "default"},
	} {
		ctx, cancel := context.WithCancel(testctx.New(t, time.Minute))
		time.AfterFunc(time.Second, cancel)
		start := time.Now()
		_, stderr, code := cli(t, ctx, append(args, nowhere...)...)
		cancel()
		if code != exitOK {
			t.Errorf("%s: exit %d, want %d:\n%s", args[0], code, exitOK, stderr)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: stopped after %s", args[0], d)
		}
	}
}
