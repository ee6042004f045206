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
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sigstore/rekor-tiles/v2/pkg/note"
	"github.com/sigstore/sigstore-go/pkg/root"

	"codeberg.org/provenix/provenix/internal/testproc"
)

// Version is the rekor-tiles release scripts/rekor.sh builds.
const Version = "2.3.0"

// BuildCommand is what a developer runs, from the repository root, when the
// binary is missing.
const BuildCommand = "scripts/rekor.sh build"

// Origin is the log's checkpoint origin and the host of its URL.
const Origin = "127.0.0.1"

// Log is one running rekor-tiles server. Its fields are read-only.
type Log struct {
	URL             string // http://127.0.0.1:<port>, no trailing slash
	PublicKey       *ecdsa.PublicKey
	LogID           []byte // sha256 of the PKIX DER of PublicKey
	TrustedRoot     *root.TrustedRoot
	TrustedRootPath string // TrustedRoot as trusted_root.json
	StartupTime     time.Duration
}

// BinaryPath is where Start looks for the server binary.
func BinaryPath() string {
	return testproc.Binary("PROVENIX_REKOR", "rekor-tiles-"+Version, "rekor-server")
}

// Start runs a fresh log for the test and stops it in t.Cleanup, dumping
// its log output when the test failed.
func Start(t testing.TB) *Log {
	t.Helper()
	bin := BinaryPath()
	testproc.Require(t, "testrekor", bin, BuildCommand, "PROVENIX_REKOR")
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

	httpPort, grpcPort := testproc.FreePort(t), testproc.FreePort(t)
	l := &Log{
		URL:       fmt.Sprintf("http://%s:%d", Origin, httpPort),
		PublicKey: &key.PublicKey,
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

	l.StartupTime = testproc.Start(t, testproc.Spec{Prefix: "testrekor", Name: "rekor-server", Bin: bin, LogPath: filepath.Join(work, "rekor.log"),
		Ready: testproc.HTTPOK(l.URL + "/healthz"), Args: []string{"serve",
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
		}})
	return l
}
