// Package vsa builds, signs and verifies SLSA verification summaries
// (https://slsa.dev/spec/v1.0/verification_summary): an in-toto v1
// Statement whose predicate says that a verifier (a cache pusher, a
// registry front-end) checked an artifact's attestations against a policy,
// and with what result. Consumers then trust one signature, the
// verifier's, instead of re-checking every builder's provenance.
//
// A store path's summary has one subject named by the store path with the
// sha256 of its NAR; an image's has the image name with its manifest
// digest. Summaries are signed into Sigstore bundles with attest's
// signing (a key, or keyless with an OIDC identity) and verified with an
// attest.Verifier. It returns errors and never logs.
package vsa

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	vsapb "github.com/in-toto/attestation/go/predicates/vsa/v1"
	intoto "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"codeberg.org/provenix/provenix/attest"
)

const (
	// PredicateType is SLSA's verification summary v1; cosign's --type
	// takes it as is.
	PredicateType = "https://slsa.dev/verification_summary/v1"
	// SLSAVersion is the SLSA version the levels refer to.
	SLSAVersion = "1.0"
)

// Results a summary records.
const (
	Passed = "PASSED"
	Failed = "FAILED"
)

// Levels. SLSA's own start with "SLSA_"; the spec lets verifiers add
// others that do not.
const (
	// BuildLevel2: the subject's provenance was signed by a builder the
	// policy trusts and verified against that builder's key or identity.
	// (Level 3 would also need proof that the builder kept its signing key
	// out of reach of build steps; a verifier of the bundles cannot see
	// that.)
	BuildLevel2 = "SLSA_BUILD_LEVEL_2"
	// BuildLevel0: no provenance was verified.
	BuildLevel0 = "SLSA_BUILD_LEVEL_0"
	// ContentAddressed: the subject was admitted by its content address
	// (a Nix source or fixed-output path), which fixes its bytes without
	// any builder.
	ContentAddressed = "PROVENIX_CONTENT_ADDRESSED"
)

// ErrInvalid is the root of every refusal of a summary's content, on
// building it (New) or on reading one (Parse).
var ErrInvalid = errors.New("vsa: invalid verification summary")

// Subject is an artifact the summary is about: a name (a store path, an
// image reference) and its digests (lowercase hex by algorithm, at least
// sha256).
type Subject struct {
	Name   string
	Digest map[string]string
}

// Ref names a document by URI and digest: the policy, an input
// attestation.
type Ref struct {
	URI    string
	Digest map[string]string
}

// Summary is what a verification summary says, in Go types: New writes
// it into a Statement and Parse reads the same type back out of one.
type Summary struct {
	Subjects []Subject
	// VerifierID is a URI naming the verifier (required).
	VerifierID string
	// TimeVerified; New uses the current time when it is zero.
	TimeVerified time.Time
	// ResourceURI is where the subject was verified for (the cache entry,
	// the image repository); required.
	ResourceURI string
	// Policy is the policy the inputs were checked against; its URI and
	// sha256 digest are required.
	Policy Ref
	// InputAttestations are the attestations the verifier checked.
	InputAttestations []Ref
	// Result is Passed or Failed.
	Result string
	// VerifiedLevels, e.g. BuildLevel2; at least one.
	VerifiedLevels []string
	// SLSAVersion the levels are of; SLSAVersion when empty.
	SLSAVersion string
}

// New returns the in-toto Statement for s after checking it (errors
// match ErrInvalid).
func New(s *Summary) (*intoto.Statement, error) {
	c := *s
	if c.TimeVerified.IsZero() {
		c.TimeVerified = time.Now()
	}
	if c.SLSAVersion == "" {
		c.SLSAVersion = SLSAVersion
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	subjects := make([]*intoto.ResourceDescriptor, len(c.Subjects))
	for i, sub := range c.Subjects {
		subjects[i] = &intoto.ResourceDescriptor{Name: sub.Name, Digest: sub.Digest}
	}
	pred := &vsapb.VerificationSummary{
		Verifier:           &vsapb.VerificationSummary_Verifier{Id: c.VerifierID},
		TimeVerified:       timestamppb.New(c.TimeVerified.UTC()),
		ResourceUri:        c.ResourceURI,
		Policy:             &vsapb.VerificationSummary_Policy{Uri: c.Policy.URI, Digest: c.Policy.Digest},
		VerificationResult: c.Result,
		VerifiedLevels:     c.VerifiedLevels,
		SlsaVersion:        c.SLSAVersion,
	}
	for _, in := range c.InputAttestations {
		pred.InputAttestations = append(pred.InputAttestations, &vsapb.VerificationSummary_InputAttestation{Uri: in.URI, Digest: in.Digest})
	}
	predStruct, err := attest.PredicateStruct(pred)
	if err != nil {
		return nil, fmt.Errorf("vsa: encode predicate: %w", err)
	}
	st := &intoto.Statement{
		Type:          intoto.StatementTypeUri,
		Subject:       subjects,
		PredicateType: PredicateType,
		Predicate:     predStruct,
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return st, nil
}

// Parse reads a Statement into a Summary, refusing anything that is not a
// verification summary with the fields New requires (errors match
// ErrInvalid). It checks no signature: Verifier.Verify does.
func Parse(st *intoto.Statement) (*Summary, error) {
	if st.GetType() != intoto.StatementTypeUri {
		return nil, fmt.Errorf("%w: statement type %q", ErrInvalid, st.GetType())
	}
	if st.GetPredicateType() != PredicateType {
		return nil, fmt.Errorf("%w: predicate type %q, want %q", ErrPredicateType, st.GetPredicateType(), PredicateType)
	}
	b, err := protojson.Marshal(st.GetPredicate())
	if err != nil {
		return nil, fmt.Errorf("%w: predicate: %w", ErrInvalid, err)
	}
	return parsePredicate(st, b)
}

// parsePredicate reads the predicate's JSON of st.
func parsePredicate(st *intoto.Statement, predJSON []byte) (*Summary, error) {
	var p vsapb.VerificationSummary
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(predJSON, &p); err != nil {
		return nil, fmt.Errorf("%w: predicate: %w", ErrInvalid, err)
	}
	s := &Summary{
		VerifierID:     p.GetVerifier().GetId(),
		ResourceURI:    p.GetResourceUri(),
		Policy:         Ref{URI: p.GetPolicy().GetUri(), Digest: p.GetPolicy().GetDigest()},
		Result:         p.GetVerificationResult(),
		VerifiedLevels: p.GetVerifiedLevels(),
		SLSAVersion:    p.GetSlsaVersion(),
	}
	if t := p.GetTimeVerified(); t != nil {
		s.TimeVerified = t.AsTime()
	}
	for _, in := range p.GetInputAttestations() {
		s.InputAttestations = append(s.InputAttestations, Ref{URI: in.GetUri(), Digest: in.GetDigest()})
	}
	for _, sub := range st.GetSubject() {
		s.Subjects = append(s.Subjects, Subject{Name: sub.GetName(), Digest: sub.GetDigest()})
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	return s, nil
}

// check is what every summary must have.
func (s *Summary) check() error {
	if len(s.Subjects) == 0 {
		return fmt.Errorf("%w: no subject", ErrInvalid)
	}
	for _, sub := range s.Subjects {
		if sub.Name == "" {
			return fmt.Errorf("%w: subject without a name", ErrInvalid)
		}
		if err := checkDigest(sub.Digest); err != nil {
			return fmt.Errorf("%w: subject %s: %w", ErrInvalid, sub.Name, err)
		}
	}
	if !isURI(s.VerifierID) {
		return fmt.Errorf("%w: verifier id %q is not a URI", ErrInvalid, s.VerifierID)
	}
	if s.ResourceURI == "" {
		return fmt.Errorf("%w: no resource URI", ErrInvalid)
	}
	if s.TimeVerified.IsZero() {
		return fmt.Errorf("%w: no time verified", ErrInvalid)
	}
	if s.Policy.URI == "" {
		return fmt.Errorf("%w: policy without a URI", ErrInvalid)
	}
	if err := checkDigest(s.Policy.Digest); err != nil {
		return fmt.Errorf("%w: policy: %w", ErrInvalid, err)
	}
	for _, in := range s.InputAttestations {
		if in.URI == "" {
			return fmt.Errorf("%w: input attestation without a URI", ErrInvalid)
		}
		if err := checkDigest(in.Digest); err != nil {
			return fmt.Errorf("%w: input attestation %s: %w", ErrInvalid, in.URI, err)
		}
	}
	if s.Result != Passed && s.Result != Failed {
		return fmt.Errorf("%w: verification result %q, want %s or %s", ErrInvalid, s.Result, Passed, Failed)
	}
	if len(s.VerifiedLevels) == 0 || slices.Contains(s.VerifiedLevels, "") {
		return fmt.Errorf("%w: no verified levels", ErrInvalid)
	}
	return nil
}

// checkDigest requires a lowercase hex sha256 (others may come with it).
func checkDigest(d map[string]string) error {
	h := d["sha256"]
	if b, err := hex.DecodeString(h); err != nil || len(b) != 32 || strings.ToLower(h) != h {
		return fmt.Errorf("sha256 digest %q is not lowercase hex of 32 bytes", h)
	}
	return nil
}

func isURI(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme != ""
}

// SHA256 is a digest map of one lowercase hex sha256, the form subjects,
// the policy and input attestations take.
func SHA256(sum [32]byte) map[string]string {
	return map[string]string{"sha256": hex.EncodeToString(sum[:])}
}
