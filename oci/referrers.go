package oci

import (
	"context"
	"encoding/json"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// serveReferrers answers the referrers API: an OCI index of the
// artifacts whose subject is the manifest digest.
func (r *Registry) serveReferrers(ctx context.Context, w http.ResponseWriter, req *http.Request, name, digest string) {
	d, err := v1.NewHash(digest)
	if err != nil {
		r.fail(w, req, http.StatusBadRequest, codeDigestInvalid, "invalid digest")
		return
	}
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}}
	imgs, err := r.images(ctx, name)
	if err != nil {
		r.storeFailure(w, req, codeNameUnknown, err)
		return
	}
	for _, img := range imgs {
		if img.digest == d {
			idx.Manifests = append(idx.Manifests, r.referrers(ctx, img)...)
		}
	}
	b, _ := json.Marshal(idx)
	w.Header().Set("Cache-Control", "no-store")
	r.writeBody(w, req, string(types.OCIImageIndex), b)
}

// referrers returns the descriptors of img's referrers.
func (r *Registry) referrers(ctx context.Context, img *image) []v1.Descriptor { return nil }

// referrerManifest returns the referrer manifest of img with digest d.
func (r *Registry) referrerManifest(ctx context.Context, img *image, d v1.Hash) (string, []byte, bool) {
	return "", nil, false
}

// referrerBlob returns a blob of one of img's referrers.
func (r *Registry) referrerBlob(ctx context.Context, img *image, d v1.Hash) ([]byte, bool) {
	return nil, false
}
