package oci

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/vsa"
)

// An image's verification summary (SLSA VSA) says that the cache's
// verifier checked every store path of the image: its subjects are the
// image manifest's digest (named by the image's nix/<hash>-<name>
// repository) and each store path with its NAR's sha256; its input
// attestations are the paths' own summaries and the builders' bundles
// they name; its policy is theirs. It is served the way cosign v3 stores
// an attestation, as an OCI 1.1 referrer of the image manifest.
//
// The registry signs it on demand, the first time a client asks for the
// image's referrers, and keeps it in the store (cachelayout.OCIVSAKey):
// an image's manifest digest depends on its layers' digests, which exist
// only once a client has asked for the image, and every published path
// is an image (its "latest"), so signing at publish time would tar every
// closure the pusher publishes. Signing needs the pusher's VSA key
// (Options.VSA); a server without it serves the summaries another server
// of the cache signed, and none for images nobody signed.
//
// Before it signs, the registry verifies each path's own summary with the
// same key, for the path's NAR sha256 (the narinfo's, from which the layer
// was made and checked) and under the cache's served policy: a layer made
// from another NAR than the pusher verified, or a path the pusher never
// summarised, gets no image summary.

// Media types and annotations of a cosign v3 attestation referrer.
const (
	bundleMediaType       = "application/vnd.dev.sigstore.bundle.v0.3+json"
	emptyMediaType        = "application/vnd.oci.empty.v1+json"
	annotationContent     = "dev.sigstore.bundle.content"
	annotationPredicate   = "dev.sigstore.bundle.predicateType"
	contentDSSE           = "dsse-envelope"
	maxBundleSize         = 16 << 20
	headerFiltersApplied  = "OCI-Filters-Applied"
	artifactTypeParameter = "artifactType"
)

// emptyJSON is the OCI empty descriptor's content.
var emptyJSON = []byte("{}")

// ErrKeylessVSA: a keyless VSA signer cannot sign image summaries, which
// need the paths' summaries verified by the signer's own key.
var ErrKeylessVSA = errors.New("oci: image summaries need a VSA key, not a keyless signer")

// ErrNoSummary: the image gets no verification summary (a path without a
// valid summary of its own, no policy served, no signer).
var ErrNoSummary = errors.New("oci: no verification summary for the image")

// summaryBundle returns the image's summary bundle: stored, or signed now
// when sign is set and the registry has a signer. (nil, nil) means none.
func (r *Registry) summaryBundle(ctx context.Context, img *image, sign bool) ([]byte, error) {
	key := cachelayout.OCIVSAKey(img.digest.Hex)
	b, err := store.ReadAll(ctx, r.st, key, maxBundleSize)
	if !errors.Is(err, store.ErrNotFound) {
		return b, err
	}
	if !sign || r.signer == nil {
		return nil, nil
	}
	ch := r.flight.DoChan("vsa:"+img.digest.Hex, func() (any, error) {
		// As long as computing the layers may take: checkLayers may.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.computeTimeout)
		defer cancel()
		if err := r.checkLayers(cctx, img); err != nil {
			return nil, err
		}
		sum, err := r.imageSummary(cctx, img)
		if err != nil {
			return nil, err
		}
		b, err := r.signer.Sign(cctx, sum)
		if err != nil {
			return nil, fmt.Errorf("oci: sign the summary of %s: %w", img.root, err)
		}
		if err := store.Put(cctx, r.st, key, bytes.NewReader(b)); err != nil {
			r.log.Warn("oci: image summary not stored", "image", img.digest.String(), "err", err)
		}
		return b, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// imageSummary checks every path's own summary and states what the image
// verification found.
func (r *Registry) imageSummary(ctx context.Context, img *image) (*vsa.Summary, error) {
	policyDoc, err := store.ReadAll(ctx, r.st, cachelayout.PolicyKey, maxBundleSize)
	if err != nil {
		return nil, fmt.Errorf("%w: the cache's policy: %w", ErrNoSummary, err)
	}
	policyDigest := vsa.DocumentDigest(policyDoc)
	sum := &vsa.Summary{
		Subjects:     []vsa.Subject{{Name: NixRepoPrefix + path.Base(img.root), Digest: map[string]string{"sha256": img.digest.Hex}}},
		TimeVerified: time.Now(),
		ResourceURI:  r.cacheURL(strings.TrimPrefix(Prefix, "/") + NixRepoPrefix + path.Base(img.root)),
		Result:       vsa.Passed,
	}
	allBuiltOrCA := true
	for _, l := range img.layers {
		p := l.ni.StorePath
		b, err := store.ReadAll(ctx, r.st, cachelayout.VSAKey(p), maxBundleSize)
		if err != nil {
			return nil, fmt.Errorf("%w: summary of %s: %w", ErrNoSummary, p, err)
		}
		narHex := hex.EncodeToString(l.ni.NarHash.Digest())
		v, err := r.verifier.Verify(b, vsa.Expect{
			Subject:      vsa.Subject{Name: p, Digest: map[string]string{"sha256": narHex}},
			PolicyDigest: policyDigest,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: summary of %s: %w", ErrNoSummary, p, err)
		}
		sum.Policy = v.Policy
		sum.Subjects = append(sum.Subjects, vsa.Subject{Name: p, Digest: map[string]string{"sha256": narHex}})
		sum.InputAttestations = append(sum.InputAttestations, vsa.Ref{URI: r.cacheURL(cachelayout.VSAKey(p)), Digest: vsa.DocumentDigest(b)})
		sum.InputAttestations = append(sum.InputAttestations, v.InputAttestations...)
		if !slices.Contains(v.VerifiedLevels, vsa.BuildLevel2) && !slices.Contains(v.VerifiedLevels, vsa.ContentAddressed) {
			allBuiltOrCA = false
		}
	}
	// The image is at build level 2 when each of its paths is: built and
	// attested by builders the policy trusts, or content-addressed (a
	// source, whose bytes no builder chose).
	if allBuiltOrCA {
		sum.VerifiedLevels = []string{vsa.BuildLevel2}
	} else {
		sum.VerifiedLevels = []string{vsa.BuildLevel0}
	}
	return sum, nil
}

// cacheURL is key under the cache's public URL, or key alone (relative to
// the cache) when it is not known.
func (r *Registry) cacheURL(key string) string { return cachelayout.URL(r.publicURL, key) }

// referrer is the cosign v3 style referrer manifest of a summary bundle.
func referrer(img *image, bundle []byte) (manifest []byte, desc v1.Descriptor) {
	annotations := map[string]string{annotationContent: contentDSSE, annotationPredicate: vsa.PredicateType}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  bundleMediaType,
		Config:        descriptorOf(emptyMediaType, emptyJSON),
		Layers:        []v1.Descriptor{descriptorOf(bundleMediaType, bundle)},
		Subject:       &v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: int64(len(img.manifest)), Digest: img.digest},
		Annotations:   annotations,
	}
	manifest, _ = json.Marshal(m)
	desc = descriptorOf(types.OCIManifestSchema1, manifest)
	desc.ArtifactType = bundleMediaType
	desc.Annotations = annotations
	return manifest, desc
}

// referrers returns the descriptors of img's referrers, signing its
// summary if needed.
func (r *Registry) referrers(ctx context.Context, img *image) ([]v1.Descriptor, error) {
	b, err := r.summaryBundle(ctx, img, true)
	if err != nil || b == nil {
		return nil, err
	}
	_, desc := referrer(img, b)
	return []v1.Descriptor{desc}, nil
}

// referrerManifest returns the referrer manifest of img with digest d.
func (r *Registry) referrerManifest(ctx context.Context, img *image, d v1.Hash) ([]byte, bool) {
	b, err := r.summaryBundle(ctx, img, false)
	if err != nil || b == nil {
		return nil, false
	}
	m, desc := referrer(img, b)
	return m, desc.Digest == d
}

// referrerBlob returns a blob of one of img's referrers: the bundle or
// the empty config.
func (r *Registry) referrerBlob(ctx context.Context, img *image, d v1.Hash) ([]byte, bool) {
	if d == descriptorOf(emptyMediaType, emptyJSON).Digest {
		return emptyJSON, true
	}
	b, err := r.summaryBundle(ctx, img, false)
	if err != nil || b == nil {
		return nil, false
	}
	return b, descriptorOf(bundleMediaType, b).Digest == d
}

// newSummaryVerifier trusts the summaries of the signer's key: the paths'
// summaries the pusher signed with it.
func newSummaryVerifier(s *vsa.Signer) (*vsa.Verifier, error) {
	pub := s.PublicKey()
	if pub == nil {
		return nil, ErrKeylessVSA
	}
	return vsa.NewVerifier(nil, attest.WithKeys(vsa.TrustedVerifier{ID: s.VerifierID(), PublicKey: pub}))
}
