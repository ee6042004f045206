package cacheclient

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cachelayout"
)

// Report is what a verification found about one store path. Its JSON form
// is `provenix verify --json`'s output.
type Report struct {
	StorePath string `json:"storePath"`
	NarSHA256 string `json:"narSha256"`
	NarSize   uint64 `json:"narSize"`
	From      string `json:"from"`
	Verified  bool   `json:"verified"`
	Verdict   string `json:"verdict"`
	Reason    string `json:"reason,omitempty"`
	Quorum    int    `json:"quorum"`
	// NarinfoSig is "valid" when the narinfo's signature was checked
	// against trusted cache keys, or why it failed.
	NarinfoSig string `json:"narinfoSignature,omitempty"`
	// ContentAddress is the narinfo's CA field, for content-addressed
	// paths (sources, fixed-output derivation outputs, text files).
	ContentAddress string `json:"ca,omitempty"`
	// References are the absolute store paths the narinfo lists.
	References   []string      `json:"references,omitempty"`
	Attestations []Attestation `json:"attestations"`
	// VSA is the check of the cache's verification summary (cache
	// entries only).
	VSA *VSAReport `json:"vsa,omitempty"`
}

// Attestation is one provenance bundle's outcome.
type Attestation struct {
	Verified    bool                `json:"verified"`
	Error       string              `json:"error,omitempty"`
	Builder     string              `json:"builder,omitempty"`
	KeyID       string              `json:"keyId,omitempty"`
	Derivation  string              `json:"derivation,omitempty"`
	System      string              `json:"system,omitempty"`
	Installable *attest.Installable `json:"installable,omitempty"`
	Source      *attest.Source      `json:"source,omitempty"`
	Workflow    *attest.Workflow    `json:"workflow,omitempty"`
	NixVersion  string              `json:"nixVersion,omitempty"`
	StartedOn   *time.Time          `json:"startedOn,omitempty"`
	FinishedOn  *time.Time          `json:"finishedOn,omitempty"`
	Invocation  string              `json:"invocationId,omitempty"`
}

func (r *Report) fail(reason string) *Report {
	r.Verified, r.Verdict, r.Reason = false, "NOT VERIFIED", reason
	return r
}

// VerifyOptions say what makes a path verified.
type VerifyOptions struct {
	// Verifier checks provenance bundles; required.
	Verifier *attest.Verifier
	// Quorum is how many distinct trusted builders must attest the NAR;
	// 0 means 1.
	Quorum int
	// Bundles, when not nil, are checked instead of the cache's provenance
	// sidecar.
	Bundles [][]byte
	// Distinct, when set, maps a verified builder id (of a build for
	// system of storePath) to what counts as one builder for Quorum: the
	// pusher's policy counts builders, owners or hosts
	// (policy.Policy.DistinctKey under the path's quorum rule), and verify
	// counts as it does when given the policy. Nil counts builder ids.
	Distinct func(builderID, system, storePath string) string
	// VSA says how a cache entry's verification summary is checked.
	VSA VSAOptions
}

func (o *VerifyOptions) check() error {
	if o.Verifier == nil {
		return errors.New("cacheclient: VerifyOptions.Verifier is required")
	}
	if o.Quorum < 0 {
		return errors.New("cacheclient: quorum must be at least 1")
	}
	if o.Quorum == 0 {
		o.Quorum = 1
	}
	return nil
}

// Verify checks storePath in the cache: its narinfo (signature against the
// client's PublicKeys when it has any), its NAR against NarHash and NarSize
// (a bomb is stopped at NarSize), and the provenance bundles (the cache's
// sidecar, or o.Bundles) against the NAR's digest, the narinfo's NarSize and
// References, and o.Verifier's trusted builders, counting o.Quorum distinct
// builders.
//
// A verdict, verified or not, is a Report with a nil error: a narinfo that
// is untrusted or names another path, a NAR that is missing or does not
// match, missing or insufficient provenance. An error means no verdict could be reached: the
// narinfo is missing (ErrNotFound), the store path is invalid, the cache
// cannot be read.
//
// A content-addressed path (narinfo CA field: sources, fixed-output
// derivation outputs, builtins.toFile) is verified when its content address
// holds, with or without provenance: the CA hash matches the NAR (or its
// one file), and the store path is the one Nix computes from the CA, the
// name and the references.
func (c *Client) Verify(ctx context.Context, storePath string, o VerifyOptions) (*Report, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	rep := &Report{StorePath: storePath, From: c.base, Quorum: o.Quorum}
	vt, why, err := c.loadVSATrust(ctx, o.VSA)
	if err != nil {
		return nil, err
	}
	ni, err := c.Narinfo(ctx, storePath)
	switch {
	case errors.Is(err, ErrUntrusted):
		rep.NarinfoSig = err.Error()
		return rep.fail(err.Error()), nil
	case errors.Is(err, ErrMismatch) || errors.Is(err, ErrMalformed):
		return rep.fail(err.Error()), nil
	case err != nil:
		return nil, err
	}
	return c.verifyNarinfo(ctx, rep, ni, o, vt, why)
}

// verifyNarinfo verifies the entry of ni; vt checks its summary (nil:
// unchecked, for the reason why).
func (c *Client) verifyNarinfo(ctx context.Context, rep *Report, ni *narinfo.NarInfo, o VerifyOptions, vt *vsaTrust, why string) (*Report, error) {
	if c.ChecksSignatures() {
		rep.NarinfoSig = "valid"
	}
	rep.ContentAddress = ni.CA
	rep.References = References(ni)
	digest, err := c.verifyContent(ctx, ni)
	rep.NarSHA256, rep.NarSize = hex.EncodeToString(digest.SHA256[:]), digest.Size
	if errors.Is(err, ErrMismatch) || errors.Is(err, ErrMalformed) || errors.Is(err, ErrNotFound) {
		// A narinfo whose NAR is missing is a broken entry: stock Nix
		// cannot substitute it either.
		return rep.fail(err.Error()), nil
	}
	if err != nil {
		return nil, err
	}
	bundles := o.Bundles
	if bundles == nil {
		prov, err := c.Provenance(ctx, rep.StorePath)
		switch {
		case errors.Is(err, ErrNotFound):
		case errors.Is(err, ErrMalformed) || errors.Is(err, ErrMismatch):
			return rep.fail(err.Error()), nil
		case err != nil:
			return nil, err
		default:
			for _, b := range prov.Bundles {
				bundles = append(bundles, b)
			}
		}
	}
	AssessBundles(rep, bundles, o)
	if !rep.Verified && ni.CA != "" {
		// verifyContent checked the content address: the store path
		// itself names these bytes, no builder needs to be trusted (nor a
		// quorum: Nix trusts content-addressed paths the same way). Any
		// bundles stay listed with their outcome.
		rep.Verified, rep.Verdict, rep.Reason = true, "content-addressed: "+ni.CA+" matches the store path and the NAR", ""
	}
	// The pusher's summary must also hold: it says this NAR passed the
	// policy the cache serves.
	if err := c.checkVSA(ctx, rep, vt, why); err != nil {
		return nil, err
	}
	return rep, nil
}

// verifyContent checks the NAR against the narinfo and, for a
// content-addressed path, the content address against the store path.
func (c *Client) verifyContent(ctx context.Context, ni *narinfo.NarInfo) (NARDigest, error) {
	if ni.CA == "" {
		return c.VerifyNAR(ctx, ni)
	}
	return c.verifyCA(ctx, ni)
}

// AssessBundles checks bundles with o.Verifier against rep's store path, NAR
// digest, size and references (filled by the caller; nil References are
// not compared) and sets rep's verdict: verified when at least o.Quorum
// distinct trusted builders attest exactly this NAR. It serves
// verification of cache entries, local store paths and NAR files alike;
// o.Bundles is not used (bundles are the argument).
//
// Who counts as distinct is the policy's rule (o.Distinct), the one the
// pusher's tally and `provenix status` apply; without a policy, distinct
// builder ids are counted.
func AssessBundles(rep *Report, bundles [][]byte, o VerifyOptions) {
	v, quorum := o.Verifier, max(o.Quorum, 1)
	distinct := o.Distinct
	if distinct == nil {
		distinct = func(id, _, _ string) string { return id }
	}
	var narHash [32]byte
	if d, err := hex.DecodeString(rep.NarSHA256); err == nil && len(d) == 32 {
		copy(narHash[:], d)
	}
	rep.Quorum = quorum
	builders := map[string]bool{}
	var lastErr error
	for _, b := range bundles {
		a := Attestation{}
		vf, err := v.Verify(b, []attest.Subject{{Path: rep.StorePath, NarHash: narHash}})
		if err == nil {
			err = matchOutput(rep, vf)
		}
		if err != nil {
			a.Error = err.Error()
			lastErr = err
			if p, perr := attest.InspectUnverified(b); perr == nil {
				a.Builder = p.BuilderID + " (unverified claim)"
			}
		} else {
			a.Verified = true
			fillAttestation(&a, vf)
			builders[distinct(vf.BuilderID, vf.System, rep.StorePath)] = true
		}
		rep.Attestations = append(rep.Attestations, a)
	}
	switch {
	case len(bundles) == 0:
		rep.fail("no provenance found")
	case len(builders) >= quorum:
		rep.Verified, rep.Reason = true, ""
		rep.Verdict = fmt.Sprintf("verified: %d of %d required trusted builder(s) attest this NAR", len(builders), quorum)
	case len(builders) == 0:
		rep.fail(lastErr.Error())
	default:
		rep.fail(fmt.Sprintf("quorum not met: %d distinct trusted builder(s), %d required", len(builders), quorum))
	}
}

// ErrAttestedDiffers: a verified bundle attests the NAR, but another size or
// other references than the narinfo states.
var ErrAttestedDiffers = errors.New("attested output differs from the narinfo")

// matchOutput checks that what vf attests for rep's path has rep's NAR size
// and, when rep comes from a narinfo, its references.
func matchOutput(rep *Report, vf *attest.Verified) error {
	for _, o := range vf.Outputs {
		if o.Path != rep.StorePath {
			continue
		}
		if o.NarSize != 0 && o.NarSize != rep.NarSize {
			return fmt.Errorf("%w: NAR size %d attested, %d served", ErrAttestedDiffers, o.NarSize, rep.NarSize)
		}
		if rep.References == nil {
			return nil // a local path or NAR file: no narinfo to compare with
		}
		want := slices.Sorted(slices.Values(o.References))
		got := slices.Sorted(slices.Values(rep.References))
		if !slices.Equal(want, got) {
			return fmt.Errorf("%w: references %v attested, narinfo lists %v", ErrAttestedDiffers, want, got)
		}
		return nil
	}
	return nil
}

func fillAttestation(a *Attestation, v *attest.Verified) {
	a.Builder, a.KeyID, a.Derivation, a.System = v.BuilderID, v.KeyID, v.DrvPath, v.System
	if in := v.External.Installable; in != (attest.Installable{}) {
		a.Installable = &in
	}
	a.Source, a.Workflow = v.External.Source, v.External.Workflow
	a.NixVersion = v.Internal.NixVersion
	a.Invocation = v.InvocationID
	if t := v.StartedOn; !t.IsZero() {
		a.StartedOn = &t
	}
	if t := v.FinishedOn; !t.IsZero() {
		a.FinishedOn = &t
	}
}

// Provenance fetches the provenance sidecar of storePath. A sidecar that
// does not parse, has another version or names another path matches
// ErrMalformed or ErrMismatch.
func (c *Client) Provenance(ctx context.Context, storePath string) (*cachelayout.Provenance, error) {
	if err := checkPath(storePath); err != nil {
		return nil, err
	}
	b, u, err := c.small(ctx, cachelayout.ProvenanceKey(storePath))
	if err != nil {
		return nil, err
	}
	// Each bundle is checked against the NAR: the sidecar's own fields
	// need no more than its version.
	p, err := cachelayout.DecodeProvenance(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %v", u, ErrMalformed, err)
	}
	if p.StorePath != storePath {
		return nil, fmt.Errorf("%s: %w: provenance sidecar for %s names %s", u, ErrMismatch, storePath, p.StorePath)
	}
	return p, nil
}
