// Package testrekor runs a real Rekor v2 transparency log (rekor-tiles
// 2.3.0, POSIX file storage) for integration tests of transparency-logged
// bundles.
//
// The package only executes a prebuilt binary; it never imports the server.
// Build it once with `scripts/rekor.sh build` (scripts/install-deps.sh test
// does this). The binary is looked up in $PROVENIX_REKOR, else in
// ${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/rekor-tiles-2.3.0/rekor-server.
// A missing binary fails the test with the command to run; it never skips.
//
// What the log looks like:
//   - Start serves http://127.0.0.1:<free port> (HTTP; the gRPC and metrics
//     ports are free ports too) with its tiles in t.TempDir() and a fresh
//     ECDSA P-256 checkpoint key (rekor-tiles refuses ed25519 keys).
//   - The checkpoint origin (--hostname) is "127.0.0.1": sigstore-go checks
//     a Rekor v2 checkpoint against the host name of the log's base URL in
//     the trusted root, so the two must agree.
//   - The log ID is sha256 of the log key's PKIX DER (rekor-tiles' note
//     KeyHash for ECDSA); verifiers look a v2 entry's log up by it.
//   - Log.TrustedRoot holds only this log (no Fulcio, TSA or CT log): enough
//     for key-signed bundles. Log.TrustedRootPath is the same as
//     trusted_root.json, for `provenix verify --trusted-root` and cosign.
package testrekor

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
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

	"github.com/sigstore/rekor-tiles/v2/pkg/note"
	"github.com/sigstore/sigstore-go/pkg/root"
)

// Version is the rekor-tiles release scripts/rekor.sh builds.
const Version = "2.3.0"

// BuildCommand is what a developer runs, from the repository root, when the
// binary is missing.
const BuildCommand = "scripts/rekor.sh build"

// Origin is the log's checkpoint origin and the host of its URL.
const Origin = "127.0.0.1"

const (
	startTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
)

// Log is one running rekor-tiles server. Its fields are read-only.
type Log struct {
	URL             string // http://127.0.0.1:<port>, no trailing slash
	PublicKey       *ecdsa.PublicKey
	LogID           []byte // sha256 of the PKIX DER of PublicKey
	TrustedRoot     *root.TrustedRoot
	TrustedRootPath string // TrustedRoot as trusted_root.json
	StartupTime     time.Duration

	logPath string
}

// BinaryPath is where Start looks for the server binary.
func BinaryPath() string {
	if p := os.Getenv("PROVENIX_REKOR"); p != "" {
		return p
	}
	dir := os.Getenv("PROVENIX_TOOLS_DIR")
	if dir == "" {
		dir = "/var/cache/provenix-tools"
	}
	return filepath.Join(dir, "rekor-tiles-"+Version, "rekor-server")
}

// Start runs a fresh log for the test and stops it in t.Cleanup, dumping
// its log output when the test failed.
func Start(t testing.TB) *Log {
	t.Helper()
	bin := BinaryPath()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("testrekor: rekor-server binary missing (%v); build it with `%s` from the repository root, or point PROVENIX_REKOR at one", err, BuildCommand)
	}
	work := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testrekor: generate log key: %v", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testrekor: encode log key: %v", err)
	}
	keyPath := filepath.Join(work, "log-key.pem")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatalf("testrekor: write log key: %v", err)
	}
	storage := filepath.Join(work, "tiles")
	if err := os.Mkdir(storage, 0o700); err != nil {
		t.Fatalf("testrekor: %v", err)
	}

	httpPort, grpcPort := freePort(t), freePort(t)
	l := &Log{
		URL:       fmt.Sprintf("http://%s:%d", Origin, httpPort),
		PublicKey: &key.PublicKey,
		logPath:   filepath.Join(work, "rekor.log"),
	}
	_, l.LogID, err = note.KeyHash(Origin, l.PublicKey)
	if err != nil {
		t.Fatalf("testrekor: log id: %v", err)
	}
	l.TrustedRoot, err = root.NewTrustedRoot(root.TrustedRootMediaType01, nil, nil, nil, map[string]*root.TransparencyLog{
		hex.EncodeToString(l.LogID): {
			BaseURL:             l.URL,
			ID:                  l.LogID,
			ValidityPeriodStart: time.Now().Add(-time.Hour),
			HashFunc:            crypto.SHA256,
			PublicKey:           l.PublicKey,
			SignatureHashFunc:   crypto.SHA256,
		},
	})
	if err != nil {
		t.Fatalf("testrekor: trusted root: %v", err)
	}
	trJSON, err := l.TrustedRoot.MarshalJSON()
	if err != nil {
		t.Fatalf("testrekor: encode trusted root: %v", err)
	}
	l.TrustedRootPath = filepath.Join(work, "trusted_root.json")
	if err := os.WriteFile(l.TrustedRootPath, trJSON, 0o644); err != nil {
		t.Fatalf("testrekor: write trusted root: %v", err)
	}

	l.serve(t, bin, []string{"serve",
		"--storage-dir", storage,
		"--signer-filepath", keyPath,
		"--hostname", Origin,
		"--http-address", "127.0.0.1", "--http-port", strconv.Itoa(httpPort),
		"--grpc-address", "127.0.0.1", "--grpc-port", strconv.Itoa(grpcPort),
		"--http-metrics-port", "0",
		// Sequence and publish quickly: each Add waits for a checkpoint
		// that covers its entry. The server polls for that checkpoint every
		// second (hard-coded in rekor-tiles), so an upload still takes ~1 s.
		"--batch-max-age", "50ms",
		"--checkpoint-interval", "100ms",
	})
	return l
}

func (l *Log) serve(t testing.TB, bin string, args []string) {
	t.Helper()
	logFile, err := os.Create(l.logPath)
	if err != nil {
		t.Fatalf("testrekor: create log: %v", err)
	}
	began := time.Now()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("testrekor: start rekor-server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		stop(cmd, exited)
		logFile.Close()
		if t.Failed() {
			t.Logf("testrekor: output of rekor-server:\n%s", readTail(l.logPath))
		}
	})

	deadline := began.Add(startTimeout)
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("testrekor: rekor-server exited during startup: %v\n%s", err, readTail(l.logPath))
		default:
		}
		if ready(l.URL) {
			l.StartupTime = time.Since(began)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testrekor: rekor-server not ready at %s after %s\n%s", l.URL, startTimeout, readTail(l.logPath))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ready(base string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(base + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
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
		t.Fatalf("testrekor: free port: %v", err)
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
