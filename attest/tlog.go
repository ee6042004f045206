package attest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/verify"
)

// ErrTransparencyLog: the verifier requires a transparency log entry and
// the bundle carries none that verifies against a trusted log (no entry, an
// entry from an unknown log, or one whose inclusion proof or checkpoint
// does not check out), although its signature is otherwise good.
var ErrTransparencyLog = fmt.Errorf("%w: no valid transparency log entry", ErrVerification)

// DefaultLogTimeout bounds one upload to the transparency log when ctx has
// no deadline. A Rekor v2 upload returns once the entry is sequenced and
// covered by a signed checkpoint, which takes up to the log's checkpoint
// interval.
const DefaultLogTimeout = 30 * time.Second

// LogOptions say where a key-signed bundle is logged: a Rekor v2 log
// (rekor-tiles), which returns the entry with its inclusion proof and
// checkpoint, so the bundle verifies offline with the log's trusted root.
type LogOptions struct {
	// RekorURL is the log's base URL (e.g. https://log2025-1.rekor.sigstore.dev).
	// Its host name is the log's checkpoint origin, which verifiers check.
	RekorURL string
	// Timeout for the upload; DefaultLogTimeout when zero.
	Timeout time.Duration
}

// SignWithLog is Sign plus an upload of the signature to a Rekor v2
// transparency log: the bundle carries the log entry (a hashedrekord over
// the DSSE envelope's PAE, with the builder's public key) and its
// inclusion proof. The signing key must be ECDSA (Rekor v2 refuses
// signatures that are not over a prehash).
func SignWithLog(ctx context.Context, st *intoto.Statement, s sign.Keypair, o LogOptions) ([]byte, error) {
	u, err := url.Parse(o.RekorURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("attest: transparency log URL %q: want http(s)://host[:port]", o.RekorURL)
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultLogTimeout
	}
	rekor := sign.NewRekor(&sign.RekorOptions{BaseURL: o.RekorURL, Version: 2, Timeout: timeout})
	out, err := signBundle(st, s, sign.BundleOptions{Context: ctx, TransparencyLogs: []sign.Transparency{rekor}})
	if err != nil {
		return nil, fmt.Errorf("%w (transparency log %s)", err, o.RekorURL)
	}
	return out, nil
}

// initTlog sets up WithRequiredTlog: key-signed bundles need an entry
// from a log of trusted (NewVerifier checked it lists one).
func (v *Verifier) initTlog(trusted root.TrustedMaterial) error {
	if v.keys == nil {
		// No key builders: only keyless bundles verify, and they need a log.
		return nil
	}
	// The builder keys come first: a trusted root must never add keys a
	// bundle's hint could select.
	tm := root.TrustedMaterialCollection{v.keys, rekorLogsOnly{trusted}}
	sv, err := verify.NewVerifier(tm, verify.WithTransparencyLog(1), verify.WithNoObserverTimestamps(), verify.WithoutStatementPredicate())
	if err != nil {
		return fmt.Errorf("attest: verifier with transparency log: %w", err)
	}
	v.sigTlog = sv
	return nil
}

// rekorLogsOnly exposes only a trusted root's transparency logs, so trusting
// a log for key-signed bundles does not also trust its CAs or keys.
type rekorLogsOnly struct{ root.TrustedMaterial }

func (r rekorLogsOnly) PublicKeyVerifier(string) (root.TimeConstrainedVerifier, error) {
	return nil, errors.New("attest: the transparency log's trusted root provides no signing keys")
}
func (r rekorLogsOnly) FulcioCertificateAuthorities() []root.CertificateAuthority { return nil }
func (r rekorLogsOnly) TimestampingAuthorities() []root.TimestampingAuthority     { return nil }
func (r rekorLogsOnly) CTLogs() map[string]*root.TransparencyLog                  { return nil }

// diagnoseTlog tells a log failure from a signature failure: when the
// bundle verifies by key alone, what failed is its log entry.
func (v *Verifier) diagnoseTlog(e verify.SignedEntity, policy verify.PolicyBuilder, err error) error {
	if _, kerr := v.sig.Verify(e, policy); kerr != nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrTransparencyLog, err)
}
