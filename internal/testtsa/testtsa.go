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
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"

	"codeberg.org/provenix/provenix/internal/testproc"
)

// Version is the timestamp-authority release scripts/tsa.sh builds.
const Version = "2.1.3"

// BuildCommand is what a developer runs, from the repository root, when the
// binary is missing.
const BuildCommand = "scripts/tsa.sh build"

// TimestampPath is the RFC 3161 endpoint below the server's URL.
const TimestampPath = "/api/v1/timestamp"

// TSA is one running timestamp authority. Its fields are read-only.
type TSA struct {
	URL          string // http://127.0.0.1:<port>, no trailing slash
	TimestampURL string // URL + TimestampPath
	// Chain is the authority's certificate chain, leaf first, root last.
	Chain       []*x509.Certificate
	Authority   *root.SigstoreTimestampingAuthority
	StartupTime time.Duration
}

// BinaryPath is where Start looks for the server binary.
func BinaryPath() string {
	return testproc.Binary("PROVENIX_TSA", "tsa-"+Version, "timestamp-server")
}

// Start runs a fresh timestamp authority for the test and stops it in
// t.Cleanup, dumping its output when the test failed.
func Start(t testing.TB) *TSA {
	t.Helper()
	bin := BinaryPath()
	testproc.Require(t, "testtsa", bin, BuildCommand, "PROVENIX_TSA")
	work := t.TempDir()
	port := testproc.FreePort(t)
	a := &TSA{URL: fmt.Sprintf("http://127.0.0.1:%d", port)}
	a.TimestampURL = a.URL + TimestampPath
	a.StartupTime = testproc.Start(t, testproc.Spec{
		Prefix: "testtsa", Name: "timestamp-server", Bin: bin, Dir: work, LogPath: filepath.Join(work, "tsa.log"),
		Args: []string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--log-type", "prod"},
		Ready: func() (err error) {
			a.Chain, err = certChain(a.URL)
			return err
		},
	})
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
