// Package testnats runs Debian's nats-server (a separate process, as in
// production) from a configuration file, on loopback: as a leaf node, the
// site-side server of docs/firewalled-workers.md (Leaf), and as a JetStream
// server with accounts and permissions written the way operators write them
// (Start), which the embedded server's Go options would not exercise; and
// Provenix's own embedded server (Embedded).
package testnats

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testproc"
)

// Bin is the nats-server binary, or fails the test (never skips) saying
// what to install.
func Bin(t testing.TB) string {
	t.Helper()
	return testproc.Tool(t, "nats-server", "apt-get install nats-server", "/usr/sbin/nats-server")
}

// Leaf is a leaf node to start.
type Leaf struct {
	// Remote is the hub's URL with credentials, e.g.
	// nats-leaf://leaf:TOKEN@127.0.0.1:7422 or wss://leaf:TOKEN@host:443.
	Remote string
	// CAFile, when set, is trusted for a TLS remote (wss://, tls://).
	CAFile string
	// Token is what the leaf's own clients must present.
	Token string
	// Domain is the hub's JetStream domain, the leaf's default_js_domain.
	Domain string
	// Unlinked: Start waits only until the leaf serves its clients, not
	// until its link to the hub is up (for tests where it must not be).
	Unlinked bool
}

// Config is the leaf's nats-server configuration: no JetStream of its
// own, its clients' JetStream API mapped to the hub's domain.
func (l Leaf) Config(port, monitorPort int) string {
	tls := ""
	if l.CAFile != "" {
		tls = fmt.Sprintf(", tls: { ca_file: %q }", l.CAFile)
	}
	return fmt.Sprintf(`listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
authorization { token: %q }
default_js_domain: { "$G": %q }
leafnodes {
  remotes [ { url: %q%s } ]
}
`, port, monitorPort, l.Token, l.Domain, l.Remote, tls)
}

// Start runs the leaf until the test ends and waits until its link to the
// hub is up (unless Unlinked). It returns the nats:// URL its clients
// connect to.
func (l Leaf) Start(t testing.TB) string {
	t.Helper()
	bin := Bin(t)
	dir := t.TempDir()
	port, monitor := testproc.FreePort(t), testproc.FreePort(t)
	conf := filepath.Join(dir, "leaf.conf")
	if err := os.WriteFile(conf, []byte(l.Config(port, monitor)), 0o600); err != nil {
		t.Fatal(err)
	}
	ready := leafConnected(fmt.Sprintf("http://127.0.0.1:%d/leafz", monitor))
	if l.Unlinked {
		ready = testproc.HTTPOK(fmt.Sprintf("http://127.0.0.1:%d/varz", monitor))
	}
	testproc.Start(t, testproc.Spec{
		Prefix: "testnats", Name: "nats-server (leaf)", Bin: bin, Args: []string{"-c", conf},
		LogPath: filepath.Join(dir, "leaf.log"), StartTimeout: 15 * time.Second, Ready: ready,
	})
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// leafConnected is ready once the leaf reports a link to its hub.
func leafConnected(url string) func() error {
	return func() error {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var lz struct {
			Leafs int `json:"leafnodes"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&lz); err != nil {
			return fmt.Errorf("%s: %w", url, err)
		}
		if lz.Leafs < 1 {
			return fmt.Errorf("no link to the hub yet")
		}
		return nil
	}
}

// WithUser puts user:password into a URL's authority.
func WithUser(url, user, password string) string {
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok {
		return url
	}
	return scheme + "://" + user + ":" + password + "@" + rest
}
