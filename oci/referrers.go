package oci

import (
	"context"
	"encoding/json"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// serveReferrers answers the referrers API: an OCI index of the
// artifacts whose subject is the manifest digest, filtered by
// ?artifactType= when given. An image whose summary cannot be made gets an
// empty index; the reason is logged.
func (r *Registry) serveReferrers(ctx context.Context, w http.ResponseWriter, req *http.Request, name, digest string) {
	d, imgs, ok := r.digestAndImages(ctx, w, req, name, digest, codeNameUnknown)
	if !ok {
		return
	}
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}}
	filter := req.URL.Query().Get(artifactTypeParameter)
	for _, img := range imgs {
		if img.digest != d {
			continue
		}
		descs, err := r.referrers(ctx, img)
		if err != nil {
			if ctx.Err() != nil {
				r.fail(w, req, http.StatusServiceUnavailable, codeUnsupported, "request cancelled")
				return
			}
			r.log.Warn("oci: image without a verification summary", "image", img.root, "digest", d.String(), "err", err)
		}
		for _, desc := range descs {
			if filter == "" || desc.ArtifactType == filter {
				idx.Manifests = append(idx.Manifests, desc)
			}
		}
		break
	}
	if filter != "" {
		w.Header().Set(headerFiltersApplied, artifactTypeParameter)
	}
	b, _ := json.Marshal(idx)
	w.Header().Set("Cache-Control", "no-store")
	r.writeBody(w, req, string(types.OCIImageIndex), b)
}
