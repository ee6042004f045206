package vsa

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"

	"codeberg.org/provenix/provenix/attest"
)

// Sign builds the Statement of s and signs it with key into a Sigstore
// bundle (JSON), as attest.Sign does provenance.
func Sign(ctx context.Context, s *Summary, key sign.Keypair) ([]byte, error) {
	st, err := New(s)
	if err != nil {
		return nil, err
	}
	return attest.Sign(ctx, st, key)
}

// SignKeyless builds the Statement of s and signs it keylessly, for the
// OIDC identity in o.IDToken (attest.SignKeyless): for a verifier that
// runs with a workload identity instead of a key.
func SignKeyless(ctx context.Context, s *Summary, o attest.KeylessOptions) ([]byte, error) {
	st, err := New(s)
	if err != nil {
		return nil, err
	}
	return attest.SignKeyless(ctx, st, o)
}

// Errors of Verify, under attest.ErrVerification like a provenance
// bundle's; a bad signature, an unknown signer or a digest no subject has
// are attest's own errors (attest.ErrSignature, attest.ErrUnknownSigner,
// attest.ErrDigestMismatch).
var (
	// ErrPredicateType: the bundle is not a verification summary.
	ErrPredicateType = fmt.Errorf("%w: not a verification summary", attest.ErrPredicateType)
	// ErrPolicyMismatch: the summary names another policy than the one
	// expected.
	ErrPolicyMismatch = fmt.Errorf("%w: verification summary names another policy", attest.ErrVerification)
	// ErrSubjectMismatch: no subject of the summary has the expected name
	// with the expected digest.
	ErrSubjectMismatch = fmt.Errorf("%w: verification summary is about another artifact", attest.ErrSubjectMismatch)
	// ErrVerifierMismatch: the summary claims a verifier id the signer is
	// not trusted for.
	ErrVerifierMismatch = fmt.Errorf("%w: verification summary claims another verifier", attest.ErrUntrustedBuilder)
	// ErrNotPassed: the summary records a failed verification.
	ErrNotPassed = fmt.Errorf("%w: verification summary did not pass", attest.ErrVerification)
	// ErrResourceMismatch: the summary is for another resource URI than
	// the one expected.
	ErrResourceMismatch = fmt.Errorf("%w: verification summary is for another resource", attest.ErrVerification)
)

// Verifier checks verification summaries signed by trusted verifiers. It
// is complete when NewVerifier returns and safe for concurrent use.
type Verifier struct {
	v *attest.Verifier
}

// TrustedVerifier is a verifier's key and the one verifier id it may
// claim.
type TrustedVerifier = attest.TrustedBuilder

// TrustedIdentity is a keyless verifier: a certificate identity trusted
// for one verifier id.
type TrustedIdentity = attest.TrustedIdentity

// NewVerifier trusts the summaries signed by keys (each bound to its
// verifier id) and, with a trusted root, by keyless identities. It takes
// attest's options: attest.WithKeys(TrustedVerifier{...}),
// attest.WithIdentities(...), attest.WithRequiredTlog().
func NewVerifier(trusted root.TrustedMaterial, opts ...attest.VerifierOption) (*Verifier, error) {
	v, err := attest.NewVerifier(trusted, opts...)
	if err != nil {
		return nil, err
	}
	return &Verifier{v: v}, nil
}

// Expect is what the caller knows independently of the summary. Subject
// and PolicyDigest are required: a signed summary about some artifact
// under some policy proves nothing until it is tied to the bytes at hand
// and the policy the caller relies on.
type Expect struct {
	// Subject: the summary must have a subject of this name carrying each
	// of these digests (sha256 required).
	Subject Subject
	// PolicyDigest: the summary's policy must carry these digests
	// (sha256 required).
	PolicyDigest map[string]string
	// ResourceURI, when set, must equal the summary's.
	ResourceURI string
	// Levels, when set, must all be among the summary's verified levels.
	Levels []string
}

// Verified is a summary that passed every check.
type Verified struct {
	*Summary
	Statement *intoto.Statement
	// Signer is the trusted verifier that signed it (its id is the
	// summary's VerifierID).
	Signer TrustedVerifier
	KeyID  string
}

// Verify checks bundleJSON's signature against the trusted verifiers, that
// it is a verification summary claiming the signer's own verifier id,
// that it is about want.Subject (name and digests), names the policy of
// want.PolicyDigest and records PASSED. Errors match attest.ErrVerification.
func (v *Verifier) Verify(bundleJSON []byte, want Expect) (*Verified, error) {
	sum, err := subjectSHA256(want.Subject)
	if err != nil {
		return nil, err
	}
	if err := checkDigest(want.PolicyDigest); err != nil {
		return nil, fmt.Errorf("vsa: expected policy: %w", err)
	}
	// Which verifier's keyless identities to check against: the one the
	// summary claims, checked again below once its signature verifies.
	claimed := func(st *intoto.Statement) (string, error) {
		s, err := Parse(st)
		if err != nil {
			return "", err
		}
		return s.VerifierID, nil
	}
	signed, err := v.v.VerifyStatement(bundleJSON, [][32]byte{sum}, claimed)
	if err != nil {
		return nil, err
	}
	st := signed.Statement
	if st.GetPredicateType() != PredicateType {
		return nil, fmt.Errorf("%w: predicate type %q, want %q", ErrPredicateType, st.GetPredicateType(), PredicateType)
	}
	s, err := parsePredicate(st, signed.Predicate)
	if err != nil {
		return nil, err
	}
	if s.VerifierID != signed.Signer.ID {
		return nil, fmt.Errorf("%w: summary claims verifier %q, signer %s is trusted for %q", ErrVerifierMismatch, s.VerifierID, signed.KeyID, signed.Signer.ID)
	}
	if !hasSubject(s.Subjects, want.Subject) {
		return nil, fmt.Errorf("%w: no subject %s with digest %v", ErrSubjectMismatch, want.Subject.Name, want.Subject.Digest)
	}
	if !digestsIn(want.PolicyDigest, s.Policy.Digest) {
		return nil, fmt.Errorf("%w: summary's policy %s has sha256 %s, expected %s", ErrPolicyMismatch, s.Policy.URI, s.Policy.Digest["sha256"], want.PolicyDigest["sha256"])
	}
	if want.ResourceURI != "" && s.ResourceURI != want.ResourceURI {
		return nil, fmt.Errorf("%w: %q, expected %q", ErrResourceMismatch, s.ResourceURI, want.ResourceURI)
	}
	if s.Result != Passed {
		return nil, fmt.Errorf("%w: result %s", ErrNotPassed, s.Result)
	}
	for _, l := range want.Levels {
		if !slices.Contains(s.VerifiedLevels, l) {
			return nil, fmt.Errorf("%w: level %s not verified (summary has %v)", ErrNotPassed, l, s.VerifiedLevels)
		}
	}
	return &Verified{Summary: s, Statement: st, Signer: signed.Signer, KeyID: signed.KeyID}, nil
}

func subjectSHA256(s Subject) ([32]byte, error) {
	var sum [32]byte
	if s.Name == "" {
		return sum, errors.New("vsa: verify needs the expected subject's name")
	}
	if err := checkDigest(s.Digest); err != nil {
		return sum, fmt.Errorf("vsa: expected subject %s: %w", s.Name, err)
	}
	b, _ := hex.DecodeString(s.Digest["sha256"])
	copy(sum[:], b)
	return sum, nil
}

// hasSubject: one subject has want's name and all of want's digests.
func hasSubject(have []Subject, want Subject) bool {
	for _, s := range have {
		if s.Name == want.Name && digestsIn(want.Digest, s.Digest) {
			return true
		}
	}
	return false
}

// digestsIn: have carries every digest of want, equal.
func digestsIn(want, have map[string]string) bool {
	for alg, d := range want {
		if have[alg] != d {
			return false
		}
	}
	return len(want) > 0
}

// DocumentDigest is the digest map of a document's bytes (a served
// policy, an input attestation), in the form Ref takes.
func DocumentDigest(b []byte) map[string]string { return SHA256(sha256.Sum256(b)) }

// InspectUnverified reads the summary of a bundle without checking its
// signature: for its own signer deciding whether to sign a new one, or for
// printing what a refused one claimed. Never trust it.
func InspectUnverified(bundleJSON []byte) (*Summary, error) {
	var b bundle.Bundle
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		return nil, fmt.Errorf("%w: %w", attest.ErrMalformedBundle, err)
	}
	env, err := b.Envelope()
	if err != nil || env == nil {
		return nil, fmt.Errorf("%w: not a DSSE envelope bundle", attest.ErrMalformedBundle)
	}
	st, err := env.Statement()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", attest.ErrMalformedBundle, err)
	}
	return Parse(st)
}
