package attest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"google.golang.org/protobuf/encoding/protojson"
)

// TrustedIdentity is a keyless builder: a Fulcio certificate identity
// (OIDC issuer and subject alternative name, each exact or a regular
// expression) trusted for one builder id. A Forgejo workflow's identity is
// its OIDC token's issuer (<instance>/api/actions) and subject.
type TrustedIdentity struct {
	ID           string
	Issuer       string
	IssuerRegexp string
	SAN          string
	SANRegexp    string

	matcher verify.CertificateIdentity
}

func (t TrustedIdentity) String() string {
	iss, san := t.Issuer, t.SAN
	if iss == "" {
		iss = "~" + t.IssuerRegexp
	}
	if san == "" {
		san = "~" + t.SANRegexp
	}
	return "identity " + san + " from " + iss
}

// initKeyless sets up keyless verification (WithIdentities): the
// identities' matchers and a verifier demanding a log entry and an
// observer timestamp.
func (v *Verifier) initKeyless(trusted root.TrustedMaterial, ids []TrustedIdentity, requireSCT bool) error {
	ids = slices.Clone(ids) // the matchers are ours, not the caller's
	owner := map[[4]string]string{}
	for i := range ids {
		id := &ids[i]
		if id.ID == "" {
			return fmt.Errorf("%w: trusted identity without a builder id", ErrVerifierOptions)
		}
		// Like a key, an identity speaks for one builder id: shared, one
		// signer would be two builders of a quorum.
		k := [4]string{id.Issuer, id.IssuerRegexp, id.SAN, id.SANRegexp}
		if prev, dup := owner[k]; dup && prev != id.ID {
			return fmt.Errorf("%w: builders %s and %s share the %s", ErrVerifierOptions, prev, id.ID, id)
		}
		owner[k] = id.ID
		m, err := verify.NewShortCertificateIdentity(id.Issuer, anchor(id.IssuerRegexp), id.SAN, anchor(id.SANRegexp))
		if err != nil {
			return fmt.Errorf("%w: identity for %s: %w", ErrVerifierOptions, id.ID, err)
		}
		id.matcher = m
	}
	opts := []verify.VerifierOption{verify.WithTransparencyLog(1), verify.WithObserverTimestamps(1), verify.WithoutStatementPredicate()}
	if requireSCT {
		opts = append(opts, verify.WithSignedCertificateTimestamps(1))
	}
	kv, err := verify.NewVerifier(trusted, opts...)
	if err != nil {
		return fmt.Errorf("attest: keyless verifier: %w", err)
	}
	v.keyless, v.identities = kv, ids
	return nil
}

// identitiesFor are the trusted identities of one builder id: a bundle is
// checked only against the identities of the builder it claims to be, so
// a certificate trusted for builder A cannot sign as builder B, whatever
// order the policy lists them in.
func (v *Verifier) identitiesFor(builderID string) []TrustedIdentity {
	var out []TrustedIdentity
	for _, id := range v.identities {
		if id.ID == builderID {
			out = append(out, id)
		}
	}
	return out
}

// matchIdentity finds which of ids the verified certificate is;
// sigstore-go checked that at least one matches.
func matchIdentity(res *verify.VerificationResult, ids []TrustedIdentity) (TrustedIdentity, error) {
	if res.Signature == nil || res.Signature.Certificate == nil {
		return TrustedIdentity{}, fmt.Errorf("%w: no certificate in the verification result", ErrUnknownSigner)
	}
	c := res.Signature.Certificate
	for _, id := range ids {
		if matches(id.Issuer, id.IssuerRegexp, c.Issuer) && matches(id.SAN, id.SANRegexp, c.SubjectAlternativeName) {
			return id, nil
		}
	}
	return TrustedIdentity{}, fmt.Errorf("%w: certificate for %s from %s", ErrUnknownSigner, c.SubjectAlternativeName, c.Issuer)
}

func matches(exact, re, got string) bool {
	if exact != "" {
		return exact == got
	}
	ok, err := regexp.MatchString(anchor(re), got)
	return err == nil && ok
}

// anchor makes an identity pattern match the whole string. Unanchored,
// 'https://forge.example/org/repo' also accepted
// 'https://forge.example/org/repo-evil/…' and
// 'https://evil.example/x?https://forge.example/org/repo/': an identity
// pattern names one identity, so it is always anchored, whether or not
// its author wrote ^ and $.
func anchor(re string) string {
	if re == "" {
		return ""
	}
	return `^(?:` + re + `)$`
}

// KeylessOptions say where keyless signing gets its certificate, where
// the signature is logged and who timestamps it: a private Fulcio, Rekor
// and timestamp authority (the public Fulcio does not accept Forgejo
// issuers yet).
type KeylessOptions struct {
	FulcioURL string
	// RekorURL is a Rekor v2 log's base URL (see LogOptions.RekorURL).
	RekorURL string
	// TSAURL is an RFC 3161 timestamp authority's base URL (Sigstore's
	// timestamp-authority; SignKeyless posts to TSAURL/api/v1/timestamp,
	// and a URL already ending in that path is used as is).
	// A Rekor v2 entry carries no integrated time, so without a TSA the
	// bundle has no observer timestamp and a WithIdentities verifier rejects it; set
	// it unless the bundle is only verified elsewhere, at the current time.
	TSAURL string
	// IDToken is the job's OIDC token (from ACTIONS_ID_TOKEN_REQUEST_URL).
	IDToken string
}

// tsaTimestampPath is the RFC 3161 endpoint below a Sigstore timestamp
// authority's base URL.
const tsaTimestampPath = "/api/v1/timestamp"

// tsaEndpoint is the endpoint of the TSA at base; a base that already ends
// in it (cosign's --timestamp-server-url form) is kept.
func tsaEndpoint(base string) string {
	base = strings.TrimSuffix(base, "/")
	if strings.HasSuffix(base, tsaTimestampPath) {
		return base
	}
	return base + tsaTimestampPath
}

// SignKeyless signs st with an ephemeral key certified by Fulcio for the
// identity in the OIDC token, timestamps the signature at the TSA (if
// o.TSAURL is set) and logs it in a Rekor v2 log (rekor-tiles, as
// SignWithLog); the bundle carries the certificate, the signed timestamp
// and the log entry. The timestamp is what proves to a WithIdentities verifier that
// the short-lived certificate was valid when it signed.
func SignKeyless(ctx context.Context, st *intoto.Statement, o KeylessOptions) ([]byte, error) {
	if o.FulcioURL == "" || o.RekorURL == "" || o.IDToken == "" {
		return nil, errors.New("attest: keyless signing needs a Fulcio URL, a Rekor URL and an OIDC token")
	}
	payload, err := protojson.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("attest: encode statement: %w", err)
	}
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		return nil, fmt.Errorf("attest: ephemeral key: %w", err)
	}
	opts := sign.BundleOptions{
		Context:                    ctx,
		CertificateProvider:        sign.NewFulcio(&sign.FulcioOptions{BaseURL: o.FulcioURL}),
		CertificateProviderOptions: &sign.CertificateProviderOptions{IDToken: o.IDToken},
		TransparencyLogs:           []sign.Transparency{sign.NewRekor(&sign.RekorOptions{BaseURL: o.RekorURL, Version: 2, Timeout: DefaultLogTimeout})},
	}
	if o.TSAURL != "" {
		opts.TimestampAuthorities = []*sign.TimestampAuthority{
			sign.NewTimestampAuthority(&sign.TimestampAuthorityOptions{URL: tsaEndpoint(o.TSAURL)}),
		}
	}
	pb, err := sign.Bundle(&sign.DSSEData{Data: payload, PayloadType: PayloadType}, kp, opts)
	if err != nil {
		return nil, fmt.Errorf("attest: keyless sign: %w", err)
	}
	b, err := bundle.NewBundle(pb)
	if err != nil {
		return nil, fmt.Errorf("attest: keyless sign: %w", err)
	}
	return json.Marshal(b)
}
