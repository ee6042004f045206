// Package testtsa runs a real RFC 3161 timestamp authority (Sigstore's
// timestamp-authority 2.1.3) for integration tests of keyless signing: a
// Rekor v2 entry has no integrated time, so a keyless bundle needs a signed
// timestamp to prove its short-lived certificate was valid when it signed.
//
// The package only executes a prebuilt binary; it never imports the server.
// Build it once with `scripts/tsa.sh build` (scripts/install-deps.sh test
// does this). The binary is looked up in $PROVENIX_TSA, else in
// ${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/tsa-2.1.3/timestamp-server.
// A missing binary fails the test with the command to run; it never skips.
//
// What the authority looks like:
//   - Start serves http://127.0.0.1:<free port> with upstream's in-memory
//     signer: a fresh root, intermediate and timestamping leaf (ECDSA
//     P-256) per server. test/tsa leaves out upstream's NTP monitoring
//     (tests run offline) and its metrics listener on the fixed port 2112,
//     so several authorities can run at once.
//   - TSA.TimestampURL is the RFC 3161 endpoint signers post to
//     (sign.TimestampAuthorityOptions.URL); TSA.Chain is the server's
//     /api/v1/timestamp/certchain, leaf first, root last.
//   - TSA.Authority is that chain as a root.TimestampingAuthority, to list
//     in a trusted root (e.g. testfulcio's CA.TrustedRoot) so verifiers
//     count the TSA's timestamps as observer timestamps.
package testtsa

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
)

// Version is the timestamp-authority release scripts/tsa.sh builds.
const Version = "2.1.3"

// BuildCommand is what a developer runs, from the repository root, when the
// binary is missing.
const BuildCommand = "scripts/tsa.sh build"

// TimestampPath is the RFC 3161 endpoint below the server's URL.
const TimestampPath = "/api/v1/timestamp"

const (
	startTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
)

// TSA is one running timestamp authority. Its fields are read-only.
type TSA struct {
	URL          string // http://127.0.0.1:<port>, no trailing slash
	TimestampURL string // URL + TimestampPath
	// Chain is the authority's certificate chain, leaf first, root last.
	Chain       []*x509.Certificate
	Authority   *root.SigstoreTimestampingAuthority
	StartupTime time.Duration

	logPath string
}

// BinaryPath is where Start looks for the server binary.
func BinaryPath() string {
	if p := os.Getenv("PROVENIX_TSA"); p != "" {
		return p
	}
	dir := os.Getenv("PROVENIX_TOOLS_DIR")
	if dir == "" {
		dir = "/var/cache/provenix-tools"
	}
	return filepath.Join(dir, "tsa-"+Version, "timestamp-server")
}

// Start runs a fresh timestamp authority for the test and stops it in
// t.Cleanup, dumping its output when the test failed.
func Start(t testing.TB) *TSA {
	t.Helper()
	bin := BinaryPath()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("testtsa: timestamp-server binary missing (%v); build it with `%s` from the repository root, or point PROVENIX_TSA at one", err, BuildCommand)
	}
	work := t.TempDir()
	port := freePort(t)
	a := &TSA{URL: fmt.Sprintf("http://127.0.0.1:%d", port), logPath: filepath.Join(work, "tsa.log")}
	a.TimestampURL = a.URL + TimestampPath
	a.serve(t, bin, []string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--log-type", "prod"})
	n := len(a.Chain)
	a.Authority = &root.SigstoreTimestampingAuthority{
		Root:          a.Chain[n-1],
		Intermediates: a.Chain[1 : n-1],
		Leaf:          a.Chain[0],
		// The memory signer backdates its root a few minutes.
		ValidityPeriodStart: a.Chain[n-1].NotBefore,
		ValidityPeriodEnd:   a.Chain[n-1].NotAfter,
		URI:                 a.URL,
	}
	return a
}

func (a *TSA) serve(t testing.TB, bin string, args []string) {
	t.Helper()
	logFile, err := os.Create(a.logPath)
	if err != nil {
		t.Fatalf("testtsa: create log: %v", err)
	}
	began := time.Now()
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Dir(a.logPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("testtsa: start timestamp-server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		stop(cmd, exited)
		logFile.Close()
		if t.Failed() {
			t.Logf("testtsa: output of timestamp-server:\n%s", readTail(a.logPath))
		}
	})

	deadline := began.Add(startTimeout)
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("testtsa: timestamp-server exited during startup: %v\n%s", err, readTail(a.logPath))
		default:
		}
		chain, err := certChain(a.URL)
		if err == nil {
			a.Chain = chain
			a.StartupTime = time.Since(began)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testtsa: timestamp-server not ready at %s after %s: %v\n%s", a.URL, startTimeout, err, readTail(a.logPath))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// certChain fetches the authority's PEM chain (leaf first, root last).
func certChain(base string) ([]*x509.Certificate, error) {
	hc := http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(base + TimestampPath + "/certchain")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("certchain: %s: %s", resp.Status, body)
	}
	var chain []*x509.Certificate
	for rest := body; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certchain: %w", err)
		}
		chain = append(chain, c)
	}
	if len(chain) < 2 {
		return nil, fmt.Errorf("certchain: want a leaf and a root, got %d certificates", len(chain))
	}
	return chain, nil
}

// stop asks the server to shut down gracefully, then kills its group.
func stop(cmd *exec.Cmd, exited chan error) {
	pgid := -cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-exited
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testtsa: free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func readTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 80 {
		lines = lines[len(lines)-80:]
	}
	return strings.Join(lines, "\n")
}
