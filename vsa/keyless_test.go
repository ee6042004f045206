package vsa_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testfulcio"
	"codeberg.org/provenix/provenix/internal/testrekor"
	"codeberg.org/provenix/provenix/internal/testtsa"
	"codeberg.org/provenix/provenix/vsa"
)

// TestKeylessSigner: a verifier with an OIDC identity signs its summaries
// keylessly (a real Fulcio, Rekor v2 log and timestamp authority), reading
// its token from a file before each signature; the summary verifies for
// that identity bound to its verifier id, and not for another identity or
// another verifier id.
func TestKeylessSigner(t *testing.T) {
	const email = "pusher@provenix.test"
	log, ca, tsa := testrekor.Start(t), testfulcio.Start(t), testtsa.Start(t)
	trusted := ca.TrustedRoot(t, log.TrustedRoot.RekorLogs(), tsa.Authority)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(ca.Token(t, email)), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := vsa.NewSigner(vsa.SignerOptions{
		VerifierID: verifierID, Keyless: &attest.KeylessOptions{FulcioURL: ca.URL, RekorURL: log.URL, TSAURL: tsa.URL},
		IDTokenFile: tokenFile, Issuer: ca.Issuer, SAN: email,
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.PublicKey() != nil {
		t.Fatal("a keyless signer has a public key")
	}
	b, err := s.Sign(t.Context(), summary())
	if err != nil {
		t.Fatalf("keyless Sign: %v", err)
	}
	verifier := func(id vsa.TrustedIdentity) *vsa.Verifier {
		v, err := vsa.NewVerifier(trusted, attest.WithIdentities(id))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	got, err := verifier(vsa.TrustedIdentity{ID: verifierID, Issuer: ca.Issuer, SAN: email}).Verify(b, expect())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.VerifierID != verifierID {
		t.Fatalf("verifier %q", got.VerifierID)
	}
	if _, err := verifier(vsa.TrustedIdentity{ID: verifierID, Issuer: ca.Issuer, SAN: "other@provenix.test"}).Verify(b, expect()); !errors.Is(err, attest.ErrUnknownSigner) {
		t.Fatalf("another identity: %v, want ErrUnknownSigner", err)
	}
	if _, err := verifier(vsa.TrustedIdentity{ID: "https://other.example/pusher", Issuer: ca.Issuer, SAN: email}).Verify(b, expect()); !errors.Is(err, attest.ErrUntrustedBuilder) {
		t.Fatalf("the identity trusted for another verifier id: %v, want ErrUntrustedBuilder", err)
	}
}
