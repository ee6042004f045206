package vsa

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/sigstore/sigstore-go/pkg/sign"

	"codeberg.org/provenix/provenix/attest"
)

// DefaultVerifierID names a Provenix cache pusher when its operator names
// it nothing else.
const DefaultVerifierID = "https://codeberg.org/provenix/provenix/cache-push"

// SignerOptions configure NewSigner: a key, or keyless signing.
type SignerOptions struct {
	// VerifierID is the verifier.id of every summary signed
	// (DefaultVerifierID when empty); a URI.
	VerifierID string
	// Key signs summaries (an *attest.Signer).
	Key sign.Keypair
	// KeyFile, instead of Key, is a PKCS#8 PEM key file (attest.LoadSigner:
	// readable by its owner only).
	KeyFile string
	// Keyless signs with a Fulcio certificate for an OIDC identity instead
	// of Key. Its IDToken, or the file IDTokenFile names, holds the token.
	Keyless *attest.KeylessOptions
	// IDTokenFile is read before each keyless signature: workload
	// identity tokens live minutes, and whatever issues them (a CI
	// runner, a Kubernetes projected volume) rewrites the file.
	IDTokenFile string
	// Issuer and SAN are the identity a keyless signer's certificates
	// carry (the token's issuer and subject), which it publishes for
	// verifiers; required with Keyless.
	Issuer, SAN string
}

// Signer signs verification summaries for one verifier. It is complete
// when NewSigner returns and safe for concurrent use.
type Signer struct {
	id          string
	key         sign.Keypair
	keyless     *attest.KeylessOptions
	idTokenFile string
	issuer, san string
}

// NewSigner checks o and returns a Signer.
func NewSigner(o SignerOptions) (*Signer, error) {
	if o.KeyFile != "" {
		if o.Key != nil {
			return nil, errors.New("vsa: give a signing key or a key file, not both")
		}
		k, err := attest.LoadSigner(o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("vsa: %w", err)
		}
		o.Key = k
	}
	s := &Signer{id: o.VerifierID, key: o.Key, idTokenFile: o.IDTokenFile, issuer: o.Issuer, san: o.SAN}
	if s.id == "" {
		s.id = DefaultVerifierID
	}
	if !isURI(s.id) {
		return nil, fmt.Errorf("vsa: verifier id %q is not a URI", s.id)
	}
	switch {
	case o.Key != nil && o.Keyless != nil:
		return nil, errors.New("vsa: give a signing key or keyless options, not both")
	case o.Key == nil && o.Keyless == nil:
		return nil, errors.New("vsa: no signing key and no keyless options")
	case o.Keyless != nil:
		k := *o.Keyless
		if k.FulcioURL == "" || k.RekorURL == "" || (k.IDToken == "" && o.IDTokenFile == "") {
			return nil, errors.New("vsa: keyless signing needs a Fulcio URL, a Rekor URL and an OIDC token or token file")
		}
		if o.Issuer == "" || o.SAN == "" {
			return nil, errors.New("vsa: keyless signing needs the identity's issuer and SAN, for verifiers")
		}
		s.keyless = &k
	}
	return s, nil
}

// VerifierID is the id the signer's summaries claim.
func (s *Signer) VerifierID() string { return s.id }

// PublicKey is the signing key's public half, nil for a keyless signer.
func (s *Signer) PublicKey() crypto.PublicKey {
	if s.key == nil {
		return nil
	}
	return s.key.GetPublicKey()
}

// Identity is a keyless signer's certificate identity (issuer, SAN);
// empty for a key.
func (s *Signer) Identity() (issuer, san string) { return s.issuer, s.san }

// Sign signs sum as this verifier (its VerifierID is set to the signer's).
func (s *Signer) Sign(ctx context.Context, sum *Summary) ([]byte, error) {
	c := *sum
	c.VerifierID = s.id
	if s.key != nil {
		return Sign(ctx, &c, s.key)
	}
	o := *s.keyless
	if s.idTokenFile != "" {
		b, err := os.ReadFile(s.idTokenFile)
		if err != nil {
			return nil, fmt.Errorf("vsa: OIDC token: %w", err)
		}
		o.IDToken = strings.TrimSpace(string(b))
	}
	return SignKeyless(ctx, &c, o)
}
