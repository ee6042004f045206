package cacheclient_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfulcio"
	"codeberg.org/provenix/provenix/internal/testrekor"
	"codeberg.org/provenix/provenix/internal/testtsa"
	"codeberg.org/provenix/provenix/vsa"
)

// TestVerifyKeylessVSA: a cache whose verifier signs keylessly (a real
// Fulcio, Rekor v2 log and TSA) publishes its identity under the cache
// key's signature; Verify checks a path's summary for that identity under
// the trusted root, says what it needs without one, and refuses a summary
// when the vouched-for identity is another.
func TestVerifyKeylessVSA(t *testing.T) {
	const email = "pusher@provenix.test"
	log, ca, tsa := testrekor.Start(t), testfulcio.Start(t), testtsa.Start(t)
	trusted := ca.TrustedRoot(t, log.TrustedRoot.RekorLogs(), tsa.Authority)
	ctx := testctx.New(t, 60*time.Second)
	c := newTestCache(t)
	sp := randomStorePath("hello")
	nar := narOf(t, []byte("hello"))
	c.publish(t, sp, nar, zstdOf(t, nar), "zstd")
	policy := []byte(`{"version":1,"policy":"builders: []"}`)
	c.write(t, cachelayout.PolicyKey, policy)
	writeDoc := func(san string) {
		d := cachelayout.VerifierDocument{Version: 1, VerifierID: vsa.DefaultVerifierID, Issuer: ca.Issuer, SAN: san}
		sig, err := c.sk.Sign(rand.Reader, d.Fingerprint())
		if err != nil {
			t.Fatal(err)
		}
		d.Signatures = []string{sig.String()}
		b, _ := json.Marshal(d)
		c.write(t, cachelayout.VerifierKey, b)
	}
	writeDoc(email)
	s, err := vsa.NewSigner(vsa.SignerOptions{Keyless: &attest.KeylessOptions{FulcioURL: ca.URL, RekorURL: log.URL, TSAURL: tsa.URL, IDToken: ca.Token(t, email)},
		Issuer: ca.Issuer, SAN: email})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(nar)
	b, err := s.Sign(ctx, &vsa.Summary{
		Subjects:    []vsa.Subject{{Name: sp, Digest: vsa.SHA256(sum)}},
		ResourceURI: cachelayout.NarinfoKey(sp), Policy: vsa.Ref{URI: cachelayout.PolicyKey, Digest: vsa.DocumentDigest(policy)},
		Result: vsa.Passed, VerifiedLevels: []string{vsa.ContentAddressed},
	})
	if err != nil {
		t.Fatal(err)
	}
	c.write(t, cachelayout.VSAKey(sp), b)
	v, err := attest.NewVerifier(nil)
	if err != nil {
		t.Fatal(err)
	}
	check := func(o cacheclient.VSAOptions) *cacheclient.VSAReport {
		t.Helper()
		rep, err := c.client(t).Verify(ctx, sp, cacheclient.VerifyOptions{Verifier: v, VSA: o})
		if err != nil {
			t.Fatal(err)
		}
		if rep.VSA == nil || rep.NarSHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("report %+v", rep)
		}
		return rep.VSA
	}
	if r := check(cacheclient.VSAOptions{TrustedRoot: trusted}); !r.Verified || !strings.Contains(r.Trust, "keyless identity "+email) {
		t.Fatalf("keyless VSA under the trusted root: %+v", r)
	}
	if r := check(cacheclient.VSAOptions{}); r.Verified || !strings.Contains(r.Error, "trusted root") {
		t.Fatalf("keyless VSA without a trusted root: %+v", r)
	}
	writeDoc("other@provenix.test")
	if r := check(cacheclient.VSAOptions{TrustedRoot: trusted}); r.Verified || !strings.Contains(r.Error, "signer not trusted") {
		t.Fatalf("keyless VSA of another identity than the vouched-for one: %+v", r)
	}
}
