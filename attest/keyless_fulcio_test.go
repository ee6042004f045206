package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testfulcio"
	"codeberg.org/provenix/provenix/internal/testrekor"
	"codeberg.org/provenix/provenix/internal/testtsa"
)

// TestKeylessFulcio signs keylessly against a real Fulcio (trusting a fake
// OIDC issuer), a real Rekor v2 log and a real RFC 3161 timestamp
// authority, and verifies the bundle with the production keyless verifier
// (WithIdentities: log entry and observer timestamp required) over the
// trusted root of all three.
//
// A Rekor v2 entry carries no integrated time, so the TSA's signed
// timestamp is the bundle's only observer timestamp: "no timestamp" pins
// that a bundle signed without a TSA is refused.
func TestKeylessFulcio(t *testing.T) {
	const (
		builder = "https://builders.example/keyless"
		email   = "builder@provenix.test"
	)
	log := testrekor.Start(t)
	ca := testfulcio.Start(t)
	tsa := testtsa.Start(t)
	t.Logf("rekor-tiles ready after %s, fulcio after %s, tsa after %s", log.StartupTime, ca.StartupTime, tsa.StartupTime)
	trusted := ca.TrustedRoot(t, log.TrustedRoot.RekorLogs(), tsa.Authority)
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}

	signWith := func(token, tsaURL string) ([]byte, error) {
		st, err := NewStatement(testBuild(builder))
		if err != nil {
			t.Fatal(err)
		}
		return SignKeyless(t.Context(), st, KeylessOptions{FulcioURL: ca.URL, RekorURL: log.URL, TSAURL: tsaURL, IDToken: token})
	}
	sign := func(token string) ([]byte, error) { return signWith(token, tsa.URL) }
	began := time.Now()
	bj, err := sign(ca.Token(t, email))
	if err != nil {
		t.Fatalf("SignKeyless: %v", err)
	}
	t.Logf("keyless sign (certificate + timestamp + log upload): %s, bundle %d bytes", time.Since(began), len(bj))

	newVerifier := func(id TrustedIdentity) *Verifier {
		t.Helper()
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		v, err := NewVerifier(trusted, WithKeys(TrustedBuilder{ID: "key-builder", PublicKey: k.Public()}), WithIdentities(id))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	trust := TrustedIdentity{ID: builder, Issuer: ca.Issuer, SAN: email}

	t.Run("identity", func(t *testing.T) {
		got, err := newVerifier(trust).Verify(bj, want)
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		if got.Builder.ID != builder {
			t.Fatalf("builder %q, want %q", got.Builder.ID, builder)
		}
	})

	t.Run("no timestamp", func(t *testing.T) {
		bare, err := signWith(ca.Token(t, email), "")
		if err != nil {
			t.Fatalf("SignKeyless: %v", err)
		}
		_, err = newVerifier(trust).Verify(bare, want)
		if !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "timestamps") {
			t.Fatalf("err = %v, want a missing-timestamp %v", err, ErrSignature)
		}
		t.Logf("refused: %v", err)
	})

	t.Run("untrusted timestamp authority", func(t *testing.T) {
		other := testtsa.Start(t)
		foreign, err := signWith(ca.Token(t, email), other.URL)
		if err != nil {
			t.Fatalf("SignKeyless: %v", err)
		}
		_, err = newVerifier(trust).Verify(foreign, want)
		if !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "timestamp") {
			t.Fatalf("err = %v, want a timestamp %v", err, ErrSignature)
		}
		t.Logf("refused: %v", err)
	})

	t.Run("other subject", func(t *testing.T) {
		other, err := sign(ca.Token(t, "mallory@provenix.test"))
		if err != nil {
			t.Fatalf("SignKeyless: %v", err)
		}
		_, err = newVerifier(trust).Verify(other, want)
		if !errors.Is(err, ErrUnknownSigner) {
			t.Fatalf("err = %v, want %v", err, ErrUnknownSigner)
		}
	})

	for _, tc := range []struct {
		name  string
		token string
	}{
		{"expired token", ca.ExpiredToken(t, email)},
		{"forged token", ca.ForgedToken(t, email)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sign(tc.token)
			if err == nil {
				t.Fatal("Fulcio certified the token")
			}
			if !strings.Contains(err.Error(), "Fulcio returned 400") || !strings.Contains(err.Error(), "identity token") {
				t.Fatalf("err = %v", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}
