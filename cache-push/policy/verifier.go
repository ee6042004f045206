package policy

import (
	"errors"
	"fmt"

	"github.com/sigstore/sigstore-go/pkg/root"

	"codeberg.org/provenix/provenix/attest"
)

// Verifier returns a bundle verifier trusting exactly the policy's
// builders: keys, and certificate identities under the trusted root.
func (p *Policy) Verifier() (*attest.Verifier, error) {
	return p.VerifierWith(p.trusted)
}

// VerifierWith is Verifier with another trusted root for keyless builders
// (tests use sigstore-go's VirtualSigstore).
func (p *Policy) VerifierWith(trusted root.TrustedMaterial) (*attest.Verifier, error) {
	tb := make([]attest.TrustedBuilder, 0, len(p.Builders))
	var ids []attest.TrustedIdentity
	for _, b := range p.Builders {
		if len(b.Identities) > 0 {
			for _, id := range b.Identities {
				ids = append(ids, attest.TrustedIdentity{ID: b.ID, Issuer: id.Issuer, IssuerRegexp: id.IssuerRegexp,
					SAN: id.SAN, SANRegexp: id.SANRegexp})
			}
			continue
		}
		tb = append(tb, attest.TrustedBuilder{ID: b.ID, PublicKey: p.keys[b.ID]})
	}
	opts := []attest.VerifierOption{attest.WithKeys(tb...)}
	if len(ids) > 0 {
		if trusted == nil {
			return nil, fmt.Errorf("keyless builder %s: the policy has no trusted_root to check its certificates against", ids[0].ID)
		}
		opts = append(opts, attest.WithIdentities(ids...))
		if p.RequireSCT {
			opts = append(opts, attest.WithSignedCertificateTimestamps())
		}
	}
	if p.RequireTlog {
		if trusted == nil {
			return nil, errors.New("require_tlog: the policy has no trusted_root naming the transparency log")
		}
		opts = append(opts, attest.WithRequiredTlog())
	}
	return attest.NewVerifier(trusted, opts...)
}
