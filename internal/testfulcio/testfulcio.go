// Package testfulcio runs a real Fulcio certificate authority (1.8.5) for
// integration tests of keyless signing, together with a fake OIDC issuer
// that it trusts (or several: StartIssuers).
//
// The package only executes a prebuilt binary; it never imports the server.
// Build it once with `scripts/fulcio.sh build` (scripts/install-deps.sh test
// does this). The binary is looked up in $PROVENIX_FULCIO, else in
// ${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/fulcio-1.8.5/fulcio.
// A missing binary fails the test with the command to run; it never skips.
//
// What the CA looks like:
//   - The OIDC issuer is an httptest server on 127.0.0.1 (discovery document
//     and JWKS) whose ES256 key signs the tokens CA.Token mints: iss is the
//     issuer's URL, aud "sigstore", sub and email the given address,
//     email_verified true, valid for 10 minutes.
//   - Fulcio serves http://127.0.0.1:<free port> with `--ca ephemeralca` (an
//     in-memory self-signed root that issues leaf certificates directly) and
//     `--ct-log-url ""` (no CT log, so certificates carry no SCT: verify
//     with requireSCT false). Its config trusts the issuer with type "email":
//     a certificate's SAN is the token's email (an rfc822Name) and its
//     OIDC issuer extension is the issuer's URL (CA.Issuer).
//   - CA.TrustedRoot combines Fulcio's root with transparency logs (e.g.
//     internal/testrekor's) and timestamp authorities (e.g.
//     internal/testtsa's) into a root.TrustedRoot.
package testfulcio

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"

	"codeberg.org/provenix/provenix/internal/testproc"
)

// Version is the Fulcio release scripts/fulcio.sh builds.
const Version = "1.8.5"

// BuildCommand is what a developer runs, from the repository root, when the
// binary is missing.
const BuildCommand = "scripts/fulcio.sh build"

// Audience is the aud claim Fulcio's config expects (its ClientID).
const Audience = "sigstore"

const tokenLife = 10 * time.Minute

// CA is one running Fulcio and the OIDC issuer it trusts. Its exported
// fields are read-only.
type CA struct {
	URL    string // Fulcio, http://127.0.0.1:<port>, no trailing slash
	Issuer string // the OIDC issuer's URL: iss of minted tokens, the certificates' issuer
	// Chain is Fulcio's CA chain from /api/v2/trustBundle, root last.
	Chain       []*x509.Certificate
	StartupTime time.Duration
	// Issuers are the URLs of every OIDC issuer Fulcio trusts (StartIssuers),
	// Issuer first.
	Issuers []string

	key   *ecdsa.PrivateKey
	keyID string
	// others are the issuers after the first, each with its own key.
	others []*CA
}

// BinaryPath is where Start looks for the server binary.
func BinaryPath() string {
	return testproc.Binary("PROVENIX_FULCIO", "fulcio-"+Version, "fulcio")
}

// Start runs a fresh OIDC issuer and Fulcio for the test and stops them in
// t.Cleanup, dumping Fulcio's output when the test failed.
func Start(t testing.TB) *CA { return StartIssuers(t, 1) }

// StartIssuers is Start with n OIDC issuers, each its own server with its
// own key, all trusted by the one Fulcio: TokenFrom mints for any of them.
func StartIssuers(t testing.TB, n int) *CA {
	t.Helper()
	bin := BinaryPath()
	testproc.Require(t, "testfulcio", bin, BuildCommand, "PROVENIX_FULCIO")
	work := t.TempDir()
	// Each issuer must be up before Fulcio starts: Fulcio fetches its
	// discovery document once, at startup.
	issuers := map[string]any{}
	var c *CA
	for i := range n {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatalf("testfulcio: generate issuer key: %v", err)
		}
		is := &CA{key: key, keyID: fmt.Sprintf("testfulcio-%d", i+1)}
		srv := httptest.NewServer(is.issuerHandler())
		t.Cleanup(srv.Close)
		is.Issuer = srv.URL
		if c == nil {
			c = is
		} else {
			c.others = append(c.others, is)
		}
		c.Issuers = append(c.Issuers, is.Issuer)
		issuers[is.Issuer] = map[string]string{"IssuerURL": is.Issuer, "ClientID": Audience, "Type": "email"}
	}

	cfg, err := json.Marshal(map[string]any{"OIDCIssuers": issuers})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(work, "config.json")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		t.Fatalf("testfulcio: write config: %v", err)
	}

	httpPort, grpcPort, metricsPort := testproc.FreePort(t), testproc.FreePort(t), testproc.FreePort(t)
	c.URL = fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	c.StartupTime = testproc.Start(t, testproc.Spec{
		Prefix: "testfulcio", Name: "fulcio", Bin: bin, LogPath: filepath.Join(work, "fulcio.log"),
		StartTimeout: 30 * time.Second, Poll: 20 * time.Millisecond,
		Ready: func() (err error) {
			c.Chain, err = trustBundle(c.URL)
			return err
		},
		Args: []string{"serve",
			"--ca", "ephemeralca",
			"--config-path", cfgPath,
			"--ct-log-url", "",
			"--host", "127.0.0.1", "--port", strconv.Itoa(httpPort),
			"--grpc-host", "127.0.0.1", "--grpc-port", strconv.Itoa(grpcPort),
			"--metrics-port", strconv.Itoa(metricsPort),
			// The default is a fixed abstract socket: two Fulcios would clash.
			"--legacy-unix-domain-socket", filepath.Join(work, "legacy.sock"),
		}})
	return c
}

// TrustedRoot is a trusted root holding Fulcio's CA, the given
// transparency logs (e.g. testrekor's Log.TrustedRoot.RekorLogs()) and
// timestamp authorities (e.g. testtsa's TSA.Authority), with no CT log.
func (c *CA) TrustedRoot(t testing.TB, logs map[string]*root.TransparencyLog, tsas ...root.TimestampingAuthority) *root.TrustedRoot {
	t.Helper()
	n := len(c.Chain)
	rootCert := c.Chain[n-1]
	fca := &root.FulcioCertificateAuthority{
		Root:                rootCert,
		Intermediates:       c.Chain[:n-1],
		ValidityPeriodStart: rootCert.NotBefore,
		ValidityPeriodEnd:   rootCert.NotAfter,
		URI:                 c.URL,
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, []root.CertificateAuthority{fca}, nil, tsas, logs)
	if err != nil {
		t.Fatalf("testfulcio: trusted root: %v", err)
	}
	return tr
}

// Token mints a valid ID token for email from the trusted issuer. Fulcio
// certifies it with SAN email and issuer c.Issuer.
func (c *CA) Token(t testing.TB, email string) string {
	t.Helper()
	now := time.Now()
	return c.mint(t, c.key, c.claims(email, now.Add(-time.Minute), now.Add(tokenLife)))
}

// TokenFrom mints a valid ID token for email from issuer i (0 is
// Issuer) of StartIssuers; Fulcio certifies it with SAN email and issuer
// Issuers[i].
func (c *CA) TokenFrom(t testing.TB, i int, email string) string {
	t.Helper()
	if i == 0 {
		return c.Token(t, email)
	}
	if i < 0 || i > len(c.others) {
		t.Fatalf("testfulcio: no issuer %d of %d", i, len(c.Issuers))
	}
	return c.others[i-1].Token(t, email)
}

// ExpiredToken mints a token for email, signed by the trusted issuer, that
// expired a minute ago.
func (c *CA) ExpiredToken(t testing.TB, email string) string {
	t.Helper()
	now := time.Now()
	return c.mint(t, c.key, c.claims(email, now.Add(-tokenLife), now.Add(-time.Minute)))
}

// ForgedToken mints an otherwise valid token for email signed by a key the
// issuer never published (same key id).
func (c *CA) ForgedToken(t testing.TB, email string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	return c.mint(t, k, c.claims(email, now.Add(-time.Minute), now.Add(tokenLife)))
}

func (c *CA) claims(email string, iat, exp time.Time) map[string]any {
	return map[string]any{
		"iss": c.Issuer, "aud": Audience, "sub": email,
		"email": email, "email_verified": true,
		"iat": iat.Unix(), "nbf": iat.Unix(), "exp": exp.Unix(),
	}
}

// mint encodes and signs an ES256 JWT.
func (c *CA) mint(t testing.TB, k *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(map[string]string{"alg": "ES256", "typ": "JWT", "kid": c.keyID}) + "." + enc(claims)
	h := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		t.Fatalf("testfulcio: sign token: %v", err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func (c *CA) issuerHandler() http.Handler {
	coord := func(n *big.Int) string { return base64.RawURLEncoding.EncodeToString(n.FillBytes(make([]byte, 32))) }
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{
			"issuer":                                c.Issuer,
			"jwks_uri":                              c.Issuer + "/keys",
			"authorization_endpoint":                c.Issuer + "/auth",
			"token_endpoint":                        c.Issuer + "/token",
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"ES256"},
		})
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"keys": []map[string]string{{
			"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": c.keyID,
			"x": coord(c.key.X), "y": coord(c.key.Y),
		}}})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// trustBundle fetches Fulcio's CA chain (leaf-most first, root last).
func trustBundle(base string) ([]*x509.Certificate, error) {
	hc := http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(base + "/api/v2/trustBundle")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("trustBundle: %s: %s", resp.Status, body)
	}
	var tb struct {
		Chains []struct {
			Certificates []string `json:"certificates"`
		} `json:"chains"`
	}
	if err := json.Unmarshal(body, &tb); err != nil {
		return nil, fmt.Errorf("trustBundle: %w", err)
	}
	if len(tb.Chains) != 1 || len(tb.Chains[0].Certificates) == 0 {
		return nil, fmt.Errorf("trustBundle: want one non-empty chain, got %s", body)
	}
	var chain []*x509.Certificate
	for _, p := range tb.Chains[0].Certificates {
		b, _ := pem.Decode([]byte(p))
		if b == nil {
			return nil, fmt.Errorf("trustBundle: not PEM: %q", p)
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("trustBundle: %w", err)
		}
		chain = append(chain, cert)
	}
	return chain, nil
}
