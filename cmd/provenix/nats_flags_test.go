package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
)

// TestNATSFlagsUsage: NATS connection flags that cannot work are usage
// errors reported at once, before any connection attempt.
func TestNATSFlagsUsage(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"builders", "--nats-url", "nats://127.0.0.1:1", "--nats-cert", missing}, "--nats-cert and --nats-key"},
		{"missing CA file", []string{"builders", "--nats-url", "nats://127.0.0.1:1", "--nats-ca", missing}, "root CA"},
		{"missing nkey seed", []string{"builders", "--nats-url", "nats://127.0.0.1:1", "--nats-nkey", missing}, "nkey seed"},
		{"up: TLS flags without --nats-url", []string{"up", "--data-dir", t.TempDir(), "--nats-ca", missing}, "need --nats-url"},
		{"up: an external server's CA is used", []string{"up", "--data-dir", t.TempDir(), "--nats-url", "nats://127.0.0.1:1", "--nats-ca", missing}, "root CA"},
		{"ack wait too short", []string{"cache-push", "--data-dir", t.TempDir(), "--ack-wait", "1s"}, "--ack-wait"},
		{"volunteer: ack wait too short", []string{"volunteer", "--farm", "--data-dir", t.TempDir(), "--ack-wait", "1s"}, "--ack-wait"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, stderr, code := cli(t, ctx, tc.args...)
			if code != exitUsageErr || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, exitUsageErr, tc.want, stderr)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("took %s: a configuration error must not be retried", d)
			}
		})
	}
}
