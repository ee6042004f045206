package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
)

// TestRunnerDaemonConnectionErrors: the daemon's set-up of several
// connections fails with a usage error naming the connection at fault,
// not a crash, and refuses a tenant's secret others can read.
func TestRunnerDaemonConnectionErrors(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	conn := func(name, key, nk string) string {
		return fmt.Sprintf(`    %[1]s:
      url: http://127.0.0.1:1/
      uuid: u-%[1]s
      token: t-%[1]s
      provenix:
        tenant: %[1]s
        key: %[2]s
        nats_nkey: %[3]s
        job_users: [%[1]s-0]
`, name, key, nk)
	}
	for _, c := range []struct {
		name string
		a, b string // nkey file modes
		want string
	}{
		{"invalid key", "0600", "0600", "connection a: "},
		{"open seed", "0600", "0644", "b.nk is mode -rw-r--r--, readable by others"},
	} {
		t.Run(c.name, func(t *testing.T) {
			mode := func(s string) os.FileMode {
				var m os.FileMode
				fmt.Sscanf(s, "%o", &m)
				return m
			}
			cfg := write("config.yaml", "runner:\n  labels: [nix]\nserver:\n  connections:\n"+
				conn("a", write("a.key", "not a key", 0o600), write("a.nk", "seed", mode(c.a)))+
				conn("b", write("b.key", "not a key", 0o600), write("b.nk", "seed", mode(c.b))), 0o600)
			_, errOut, code := cli(t, ctx, "--data-dir", t.TempDir(), "runner", "daemon", "--config", cfg)
			if code != exitUsageErr || !strings.Contains(errOut, c.want) || strings.Contains(errOut, "panic") {
				t.Errorf("exit %d, want %d and %q:\n%s", code, exitUsageErr, c.want, errOut)
			}
		})
	}
}
