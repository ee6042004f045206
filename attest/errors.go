package attest

import (
	"errors"
	"fmt"
)

// ErrVerification is the root of every reason a bundle is not accepted;
// the more specific errors below wrap it, so callers can match either.
var ErrVerification = errors.New("attestation not verified")

var (
	// ErrMalformedBundle: the bundle or its Statement does not parse.
	ErrMalformedBundle = fmt.Errorf("%w: malformed bundle", ErrVerification)
	// ErrUnknownSigner: the bundle names a key that is not trusted.
	ErrUnknownSigner = fmt.Errorf("%w: signer not trusted", ErrVerification)
	// ErrSignature: the signature does not verify over the payload.
	ErrSignature = fmt.Errorf("%w: bad signature", ErrVerification)
	// ErrSubjectMismatch: an expected subject name is absent.
	ErrSubjectMismatch = fmt.Errorf("%w: subject mismatch", ErrVerification)
	// ErrDigestMismatch: a subject's digest differs from the artifact's.
	ErrDigestMismatch = fmt.Errorf("%w: digest mismatch", ErrVerification)
	// ErrPredicateType: the Statement is not SLSA v1 provenance of our build type.
	ErrPredicateType = fmt.Errorf("%w: wrong predicate or build type", ErrVerification)
	// ErrUntrustedBuilder: the provenance names a builder id the signing key
	// is not trusted for.
	ErrUntrustedBuilder = fmt.Errorf("%w: untrusted builder id", ErrVerification)
)

// ErrSignedMalformed: the signature verified for a trusted builder, but
// what it signed is not valid provenance of BuildType (a subject or
// reference that is no store path, no derivation, another builder's id).
// Unlike the other errors, only the holder of that builder's key can have
// made it: SignedMalformedError names the builder to blame.
var ErrSignedMalformed = fmt.Errorf("%w: trusted signer signed a malformed statement", ErrVerification)

// SignedMalformedError is ErrSignedMalformed for one builder. Err is the
// defect (it wraps ErrMalformedBundle or ErrUntrustedBuilder).
type SignedMalformedError struct {
	BuilderID string
	Err       error
}

func (e *SignedMalformedError) Error() string {
	return fmt.Sprintf("builder %s signed a malformed statement: %v", e.BuilderID, e.Err)
}

func (e *SignedMalformedError) Unwrap() []error { return []error{e.Err, ErrSignedMalformed} }
