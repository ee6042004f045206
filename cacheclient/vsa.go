package cacheclient

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/sigstore/sigstore-go/pkg/root"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/vsa"
)

// VSAOptions say how Verify checks a path's verification summary (the
// pusher's signed VSA, cachelayout.VSAKey).
//
// Whose summaries count: with Key, only that key's (pinned by the user,
// `verify --vsa-key`). Without it, the key the cache publishes
// (cachelayout.VerifierKey), but only when the client trusts a cache key
// (Options.PublicKeys, `verify --cache-key`) that signed that document:
// the trust a user already gives the cache's narinfos extends to its
// verifier, and a key served without that signature is never trusted.
// With neither, summaries are not checked (VSAReport.Checked false).
//
// A summary that is there must verify, for the path's NAR, under the
// policy the cache serves (cachelayout.PolicyKey): one naming another
// policy or another NAR, or with a bad signature, fails the path. A
// missing one fails it with Require or a pinned Key (the user asked for
// the verifier's word); otherwise it is reported (entries copied into the
// cache by other means than the pusher, published before it signed
// summaries, have none).
type VSAOptions struct {
	Key crypto.PublicKey
	// TrustedRoot (Fulcio CA, Rekor log, TSA) checks the summaries of a
	// cache whose verifier signs keylessly: its published identity, once
	// the trusted cache key vouches for it.
	TrustedRoot root.TrustedMaterial
	// Require fails paths without a summary, and a cache whose summaries
	// cannot be checked.
	Require bool
	// Off skips summaries altogether.
	Off bool
}

// VSAReport is what the check of a path's verification summary found.
type VSAReport struct {
	Checked bool `json:"checked"`
	// Trust is where the verifier key came from, or why summaries were
	// not checked.
	Trust        string     `json:"trust,omitempty"`
	Verified     bool       `json:"verified"`
	Error        string     `json:"error,omitempty"`
	Verifier     string     `json:"verifier,omitempty"`
	KeyID        string     `json:"keyId,omitempty"`
	TimeVerified *time.Time `json:"timeVerified,omitempty"`
	Result       string     `json:"result,omitempty"`
	Levels       []string   `json:"levels,omitempty"`
	// PolicySHA256 is the digest of the policy the summary names.
	PolicySHA256 string `json:"policySha256,omitempty"`
}

// ErrVSA: a path's verification summary is missing or does not verify.
var ErrVSA = errors.New("verification summary not verified")

// vsaTrust is how one Verify or VerifyClosure checks summaries: a
// verifier and the served policy's digest; or, with failure set, the
// reason every path fails (the pinned verifier's cache serves no policy);
// nil when summaries are not checked.
type vsaTrust struct {
	v        *vsa.Verifier
	policy   map[string]string
	trust    string
	failure  error
	required bool
}

// loadVSATrust reads the cache's verifier document and policy and decides
// whose summaries count (VSAOptions). It returns (nil, why) when summaries
// are not checked.
func (c *Client) loadVSATrust(ctx context.Context, o VSAOptions) (*vsaTrust, string, error) {
	if o.Off {
		return nil, "not checked (turned off)", nil
	}
	b, u, err := c.small(ctx, cachelayout.VerifierKey)
	var (
		doc    *cachelayout.VerifierDocument
		docErr error
	)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return nil, "", err
	default:
		var d cachelayout.VerifierDocument
		if err := json.Unmarshal(b, &d); err != nil || d.Version != cachelayout.VerifierDocumentVersion || d.VerifierID == "" {
			docErr = fmt.Errorf("%w: %s: malformed verifier document (%v)", ErrVSA, u, err)
		} else {
			doc = &d
		}
	}
	t := &vsaTrust{required: o.Require || o.Key != nil}
	key := o.Key
	unchecked := func(why string) (*vsaTrust, string, error) {
		if o.Require {
			return &vsaTrust{failure: fmt.Errorf("%w: required, and %s", ErrVSA, why)}, "", nil
		}
		return nil, "not checked: " + why, nil
	}
	id := vsa.DefaultVerifierID
	switch {
	case key != nil:
		t.trust = "pinned key"
		if doc != nil {
			id = doc.VerifierID
		}
	case docErr != nil && len(c.keys) > 0:
		// The cache key should vouch for it: a broken one is no reason
		// to skip the check.
		t.failure = docErr
		return t, "", nil
	case doc == nil:
		return unchecked("the cache publishes no readable verifier and no key was given")
	case len(c.keys) == 0:
		return unchecked("no trusted cache key vouches for the cache's verifier key, and no key was given")
	default:
		if !signedByCache(doc, c.keys) {
			t.failure = fmt.Errorf("%w: the cache's verifier document %s is not signed by a trusted cache key", ErrVSA, u)
			return t, "", nil
		}
		if doc.PublicKey == "" {
			return c.keylessVSATrust(ctx, t, doc, o.TrustedRoot)
		}
		k, err := attest.ParsePublicKey([]byte(doc.PublicKey))
		if err != nil {
			t.failure = fmt.Errorf("%w: %s: %v", ErrVSA, u, err)
			return t, "", nil
		}
		key, id, t.trust = k, doc.VerifierID, "published key, signed by the trusted cache key"
	}
	if t.v, err = vsa.NewVerifier(nil, attest.WithKeys(vsa.TrustedVerifier{ID: id, PublicKey: key})); err != nil {
		return nil, "", fmt.Errorf("cacheclient: VSA key: %w", err)
	}
	return c.servedPolicy(ctx, t)
}

// keylessVSATrust trusts the keyless identity of doc, which the cache key
// vouched for, under the trusted root.
func (c *Client) keylessVSATrust(ctx context.Context, t *vsaTrust, doc *cachelayout.VerifierDocument, tr root.TrustedMaterial) (*vsaTrust, string, error) {
	if tr == nil {
		t.failure = fmt.Errorf("%w: the cache's verifier signs keylessly (%s from %s): checking its summaries needs the Sigstore trusted root (--trusted-root)", ErrVSA, doc.SAN, doc.Issuer)
		return t, "", nil
	}
	if doc.Issuer == "" || doc.SAN == "" {
		t.failure = fmt.Errorf("%w: the cache's verifier document names neither a key nor an identity", ErrVSA)
		return t, "", nil
	}
	v, err := vsa.NewVerifier(tr, attest.WithIdentities(vsa.TrustedIdentity{ID: doc.VerifierID, Issuer: doc.Issuer, SAN: doc.SAN}))
	if err != nil {
		t.failure = fmt.Errorf("%w: %w", ErrVSA, err)
		return t, "", nil
	}
	t.v, t.trust = v, "published keyless identity "+doc.SAN+" from "+doc.Issuer+", signed by the trusted cache key"
	return c.servedPolicy(ctx, t)
}

// servedPolicy completes t with the digest of the policy the cache serves.
func (c *Client) servedPolicy(ctx context.Context, t *vsaTrust) (*vsaTrust, string, error) {
	pol, pu, err := c.small(ctx, cachelayout.PolicyKey)
	switch {
	case errors.Is(err, ErrNotFound):
		t.failure = fmt.Errorf("%w: the cache serves no policy (%s)", ErrVSA, pu)
	case err != nil:
		return nil, "", err
	default:
		t.policy = vsa.DocumentDigest(pol)
	}
	return t, "", nil
}

func signedByCache(d *cachelayout.VerifierDocument, keys []signature.PublicKey) bool {
	fp := d.Fingerprint()
	for _, s := range d.Signatures {
		sig, err := signature.ParseSignature(s)
		if err != nil {
			continue
		}
		for _, k := range keys {
			if k.Verify(fp, sig) {
				return true
			}
		}
	}
	return false
}

// checkVSA checks rep's path's summary against its NAR digest (filled by
// the caller) and fails rep when it does not verify.
func (c *Client) checkVSA(ctx context.Context, rep *Report, t *vsaTrust, why string) error {
	if t == nil {
		rep.VSA = &VSAReport{Trust: why}
		return nil
	}
	r := &VSAReport{Checked: true, Trust: t.trust}
	rep.VSA = r
	fail := func(err error) error {
		r.Error = err.Error()
		rep.fail(err.Error())
		return nil
	}
	if t.failure != nil {
		return fail(t.failure)
	}
	b, u, err := c.small(ctx, cachelayout.VSAKey(rep.StorePath))
	switch {
	case errors.Is(err, ErrNotFound) && !t.required:
		r.Checked, r.Error = false, "none for this path"
		return nil
	case errors.Is(err, ErrNotFound):
		return fail(fmt.Errorf("%w: %s: no verification summary", ErrVSA, u))
	case errors.Is(err, ErrMalformed):
		return fail(fmt.Errorf("%w: %w", ErrVSA, err))
	case err != nil:
		return err
	}
	v, err := t.v.Verify(b, vsa.Expect{
		Subject:      vsa.Subject{Name: rep.StorePath, Digest: map[string]string{"sha256": rep.NarSHA256}},
		PolicyDigest: t.policy,
	})
	if err != nil {
		return fail(fmt.Errorf("%w: %s: %w", ErrVSA, u, err))
	}
	tv := v.TimeVerified
	r.Verified, r.Verifier, r.KeyID, r.TimeVerified = true, v.VerifierID, v.KeyID, &tv
	r.Result, r.Levels, r.PolicySHA256 = v.Result, v.VerifiedLevels, v.Policy.Digest["sha256"]
	return nil
}
