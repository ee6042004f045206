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
	"github.com/sigstore/sigstore-go/pkg/verify"
)

// TestKeylessFulcio signs keylessly against a real Fulcio (trusting a fake
// OIDC issuer) and a real Rekor v2 log, and verifies the bundle with an
// identity policy over the trusted root of both.
//
// A Rekor v2 entry carries no integrated time, and SignKeyless asks no
// timestamp authority, so such a bundle has no observer timestamp to check
// Fulcio's short-lived certificate against: WithIdentities (which demands
// one) rejects it, as "no observer timestamp" pins. The identity checks
// below therefore swap in a sigstore-go verifier that checks the
// certificate at the current time instead (possible only while it is valid,
// 10 minutes); everything else (chain to the Fulcio CA, log entry and
// inclusion proof, signature, digests, identity policy, builder id) is
// attest's own path.
func TestKeylessFulcio(t *testing.T) {
	const (
		builder = "https://builders.example/keyless"
		email   = "builder@provenix.test"
	)
	log := testrekor.Start(t)
	ca := testfulcio.Start(t)
	t.Logf("rekor-tiles ready after %s, fulcio after %s", log.StartupTime, ca.StartupTime)
	trusted := ca.TrustedRoot(t, log.TrustedRoot.RekorLogs())
	want := []Subject{{Path: testOut, NarHash: sha256.Sum256([]byte("nar"))}}

	sign := func(token string) ([]byte, error) {
		st, err := NewStatement(testBuild(builder))
		if err != nil {
			t.Fatal(err)
		}
		return SignKeyless(t.Context(), st, KeylessOptions{FulcioURL: ca.URL, RekorURL: log.URL, IDToken: token})
	}
	began := time.Now()
	bj, err := sign(ca.Token(t, email))
	if err != nil {
		t.Fatalf("SignKeyless: %v", err)
	}
	t.Logf("keyless sign (certificate + log upload): %s, bundle %d bytes", time.Since(began), len(bj))

	newVerifier := func(id TrustedIdentity) *Verifier {
		t.Helper()
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		v, err := NewVerifier([]TrustedBuilder{{ID: "key-builder", PublicKey: k.Public()}})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.WithIdentities(trusted, []TrustedIdentity{id}, false); err != nil {
			t.Fatal(err)
		}
		return v
	}
	atCurrentTime := func(id TrustedIdentity) *Verifier {
		t.Helper()
		v := newVerifier(id)
		kv, err := verify.NewVerifier(trusted, verify.WithTransparencyLog(1), verify.WithCurrentTime())
		if err != nil {
			t.Fatal(err)
		}
		v.keyless = kv
		return v
	}
	trust := TrustedIdentity{ID: builder, Issuer: ca.Issuer, SAN: email}

	t.Run("no observer timestamp", func(t *testing.T) {
		_, err := newVerifier(trust).Verify(bj, want)
		if !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "timestamps") {
			t.Fatalf("err = %v, want a missing-timestamp %v (did SignKeyless gain a TSA? then verify with WithIdentities)", err, ErrSignature)
		}
	})

	t.Run("identity", func(t *testing.T) {
		got, err := atCurrentTime(trust).Verify(bj, want)
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		if got.Builder.ID != builder {
			t.Fatalf("builder %q, want %q", got.Builder.ID, builder)
		}
	})

	t.Run("other subject", func(t *testing.T) {
		other, err := sign(ca.Token(t, "mallory@provenix.test"))
		if err != nil {
			t.Fatalf("SignKeyless: %v", err)
		}
		_, err = atCurrentTime(trust).Verify(other, want)
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
