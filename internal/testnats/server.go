package testnats

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testproc"
)

// Server is a running nats-server.
type Server struct {
	URL     string
	LogPath string
}

// Log is the server's output so far (with -DV: every denied subject).
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return string(b)
}

// Start runs nats-server with JetStream under dir and conf appended to a
// generated listen and jetstream block; conf may include files relative
// to dir (the configuration file is written there). debug adds -DV.
// It fails the test, never skips, when nats-server is missing.
func Start(t testing.TB, dir, conf string, debug bool) *Server {
	t.Helper()
	bin := Bin(t)
	port := testproc.FreePort(t)
	cfg := filepath.Join(dir, "nats-server.conf")
	body := fmt.Sprintf("listen: \"127.0.0.1:%d\"\njetstream: {store_dir: %q}\n%s\n", port, filepath.Join(dir, "js"), conf)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Server{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), LogPath: filepath.Join(dir, "nats-server.log")}
	args := []string{"-c", cfg}
	if debug {
		args = append(args, "-DV")
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testproc.Start(t, testproc.Spec{
		Prefix: "testnats", Name: "nats-server", Bin: bin, Args: args, LogPath: s.LogPath,
		Ready: func() error {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return err
			}
			return c.Close()
		},
	})
	return s
}
