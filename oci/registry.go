// Package oci serves a Provenix cache as a read-only OCI registry: every
// published store path is an image whose layers are the store paths of
// its closure, one tar per path, streamed from the NARs.
//
// Routes (the distribution spec's pull side, under /v2/):
//
//	GET/HEAD /v2/                                  API check
//	GET/HEAD /v2/<name>/manifests/<tag|digest>     OCI image manifest
//	GET/HEAD /v2/<name>/blobs/<digest>             config or layer
//	GET      /v2/<name>/tags/list                  tags
//	GET      /v2/<name>/referrers/<digest>         OCI index of referrers
//
// Names: nix/<hash>-<name> is the store path /nix/store/<hash>-<name>
// under tag "latest"; other names are operators' tags (SetTag), kept in
// the store so that every server of a cache agrees. Only published paths
// (narinfo present, whole closure present) are served; anything else is
// 404, like a path of another cache. Access control is the cache server's
// (its readers), which wraps this handler.
//
// A layer's digest is computed once, the first time an image needs it,
// and kept in the store (cachelayout.OCILayerKey), so manifests never read
// NARs after that. Layers are uncompressed tars: the NAR is already
// decompressed to make the tar, and compressing it again would cost the
// server a core per pull for little gain on the wire of a cache.
package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/singleflight"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/storepath"
	"codeberg.org/provenix/provenix/vsa"
)

// Prefix is where the registry is mounted on the cache server.
const Prefix = "/v2/"

// Options configure New. The zero value is valid.
type Options struct {
	// Logger receives errors and debug records; nil discards them.
	Logger *slog.Logger
	// Platform is the images' OS and architecture (a narinfo does not say
	// which system a path is for); zero means linux and this host's
	// architecture.
	Platform v1.Platform
	// Concurrency bounds the layer digests computed at once; zero means
	// GOMAXPROCS.
	Concurrency int
	// MaxClosure bounds the paths of one image; zero means 20000.
	MaxClosure int
	// ComputeTimeout bounds computing one layer digest; zero means 30
	// minutes.
	ComputeTimeout time.Duration
	// VSA, when set, signs images' verification summaries on demand (see
	// attest.go); it must hold the key the pusher signs paths' summaries
	// with. Nil serves only the summaries already stored.
	VSA *vsa.Signer
	// PublicURL is the cache's URL as clients see it, for the URIs in
	// summaries; empty writes them relative to the cache.
	PublicURL string
}

// Registry is the http.Handler of the registry. It is safe for concurrent
// use and holds no goroutines of its own between requests.
type Registry struct {
	st             store.Store
	log            *slog.Logger
	platform       v1.Platform
	concurrency    int
	maxClosure     int
	computeTimeout time.Duration
	sem            chan struct{}
	// computed holds the layer digests this process made from the NARs
	// (layerKey → digest): the ones a summary may vouch for without
	// computing them again (checkLayers).
	computed  sync.Map
	flight    singleflight.Group
	cache     *imageCache
	signer    *vsa.Signer
	verifier  *vsa.Verifier // of the paths' summaries, with signer's key
	publicURL string
}

// New returns the registry of the cache in st. It writes to st only
// objects under cachelayout.OCIPrefix.
func New(st store.Store, o Options) (*Registry, error) {
	r := &Registry{
		st: st, log: o.Logger, platform: o.Platform, concurrency: o.Concurrency,
		maxClosure: o.MaxClosure, computeTimeout: o.ComputeTimeout,
		cache:  &imageCache{max: 1024, m: map[string]*image{}},
		signer: o.VSA, publicURL: o.PublicURL,
	}
	if r.signer != nil {
		var err error
		if r.verifier, err = newSummaryVerifier(r.signer); err != nil {
			return nil, err
		}
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.platform.OS == "" {
		r.platform.OS = "linux"
	}
	if r.platform.Architecture == "" {
		r.platform.Architecture = runtime.GOARCH
	}
	if r.concurrency <= 0 {
		r.concurrency = runtime.GOMAXPROCS(0)
	}
	if r.maxClosure <= 0 {
		r.maxClosure = 20000
	}
	if r.computeTimeout <= 0 {
		r.computeTimeout = 30 * time.Minute
	}
	r.sem = make(chan struct{}, r.concurrency)
	return r, nil
}

// Error codes of the distribution spec.
const (
	codeNameUnknown     = "NAME_UNKNOWN"
	codeManifestUnknown = "MANIFEST_UNKNOWN"
	codeBlobUnknown     = "BLOB_UNKNOWN"
	codeNameInvalid     = "NAME_INVALID"
	codeDigestInvalid   = "DIGEST_INVALID"
	codeUnsupported     = "UNSUPPORTED"
	codeDenied          = "DENIED"
)

// Header values.
const (
	headerDigest    = "Docker-Content-Digest"
	apiVersion      = "registry/2.0"
	immutableCache  = "public, max-age=31536000, immutable"
	tagCacheControl = "public, max-age=60"
)

func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", apiVersion)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		r.fail(w, req, http.StatusMethodNotAllowed, codeUnsupported, "this registry is read-only")
		return
	}
	rest, ok := strings.CutPrefix(req.URL.Path, Prefix)
	if !ok && req.URL.Path != strings.TrimSuffix(Prefix, "/") {
		r.fail(w, req, http.StatusNotFound, codeNameUnknown, "not a registry path")
		return
	}
	if rest == "" {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "{}")
		return
	}
	segs := strings.Split(rest, "/")
	if len(segs) < 3 {
		r.fail(w, req, http.StatusNotFound, codeNameUnknown, "unknown route")
		return
	}
	name := strings.Join(segs[:len(segs)-2], "/")
	kind, arg := segs[len(segs)-2], segs[len(segs)-1]
	if checkRepo(name) != nil {
		r.fail(w, req, http.StatusNotFound, codeNameInvalid, "invalid repository name")
		return
	}
	ctx := req.Context()
	switch {
	case kind == "manifests":
		r.serveManifest(ctx, w, req, name, arg)
	case kind == "blobs":
		r.serveBlob(ctx, w, req, name, arg)
	case kind == "tags" && arg == "list":
		r.serveTags(ctx, w, req, name)
	case kind == "referrers":
		r.serveReferrers(ctx, w, req, name, arg)
	default:
		r.fail(w, req, http.StatusNotFound, codeNameUnknown, "unknown route")
	}
}

// ref is one image of a repository: its store path and entrypoint.
type ref struct {
	tag        string
	storePath  string
	entrypoint []string
}

// nixRoot returns the store path of a nix/<hash>-<name> repository, or ""
// when name is not one. Whether it is published is up to the caller.
func nixRoot(name string) string {
	base, ok := strings.CutPrefix(name, NixRepoPrefix)
	if !ok || strings.Contains(base, "/") {
		return ""
	}
	p := storepath.Dir + "/" + base
	if storepath.Check(p) != nil {
		return ""
	}
	return p
}

// resolveTag returns the image a tag of name points to.
func (r *Registry) resolveTag(ctx context.Context, name, tag string) (*ref, error) {
	if p := nixRoot(name); p != "" {
		if tag != LatestTag {
			return nil, store.ErrNotFound
		}
		return &ref{tag: tag, storePath: p}, nil
	}
	if !tagRE.MatchString(tag) {
		return nil, store.ErrNotFound
	}
	t, err := readTag(ctx, r.st, name, tag)
	if err != nil {
		return nil, err
	}
	return &ref{tag: tag, storePath: t.StorePath, entrypoint: t.Entrypoint}, nil
}

// refs returns every image of name.
func (r *Registry) refs(ctx context.Context, name string) ([]*ref, error) {
	if p := nixRoot(name); p != "" {
		return []*ref{{tag: LatestTag, storePath: p}}, nil
	}
	tags, err := listTags(ctx, r.st, name)
	if err != nil {
		return nil, err
	}
	var out []*ref
	for _, tag := range tags {
		rf, err := r.resolveTag(ctx, name, tag)
		if errors.Is(err, store.ErrNotFound) {
			continue // deleted since the listing
		}
		if err != nil {
			return nil, err
		}
		out = append(out, rf)
	}
	return out, nil
}

// images returns the published images of name; refs whose path or
// closure is not published are left out.
func (r *Registry) images(ctx context.Context, name string) ([]*image, error) {
	refs, err := r.refs(ctx, name)
	if err != nil {
		return nil, err
	}
	var out []*image
	for _, rf := range refs {
		img, err := r.image(ctx, rf.storePath, rf.entrypoint)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// digestAndImages parses a digest of a request and returns the images of
// name; when either fails it answers the request and returns false.
func (r *Registry) digestAndImages(ctx context.Context, w http.ResponseWriter, req *http.Request, name, digest, code string) (v1.Hash, []*image, bool) {
	d, err := v1.NewHash(digest)
	if err != nil {
		r.fail(w, req, http.StatusBadRequest, codeDigestInvalid, "invalid digest")
		return v1.Hash{}, nil, false
	}
	imgs, err := r.images(ctx, name)
	if err != nil {
		r.storeFailure(w, req, code, err)
		return v1.Hash{}, nil, false
	}
	return d, imgs, true
}

func (r *Registry) serveManifest(ctx context.Context, w http.ResponseWriter, req *http.Request, name, reference string) {
	if strings.Contains(reference, ":") {
		d, imgs, ok := r.digestAndImages(ctx, w, req, name, reference, codeManifestUnknown)
		if !ok {
			return
		}
		for _, img := range imgs {
			if img.digest == d {
				r.writeBlob(w, req, string(types.OCIManifestSchema1), img.manifest, d)
				return
			}
			if b, ok := r.referrerManifest(ctx, img, d); ok {
				r.writeBlob(w, req, string(types.OCIManifestSchema1), b, d)
				return
			}
		}
		r.fail(w, req, http.StatusNotFound, codeManifestUnknown, "manifest unknown")
		return
	}
	rf, err := r.resolveTag(ctx, name, reference)
	if err != nil {
		r.storeFailure(w, req, codeManifestUnknown, err)
		return
	}
	img, err := r.image(ctx, rf.storePath, rf.entrypoint)
	if err != nil {
		r.storeFailure(w, req, codeManifestUnknown, err)
		return
	}
	w.Header().Set("Cache-Control", tagCacheControl)
	r.writeBlob(w, req, string(types.OCIManifestSchema1), img.manifest, img.digest)
}

func (r *Registry) serveBlob(ctx context.Context, w http.ResponseWriter, req *http.Request, name, digest string) {
	d, imgs, ok := r.digestAndImages(ctx, w, req, name, digest, codeBlobUnknown)
	if !ok {
		return
	}
	for _, img := range imgs {
		if img.configDesc.Digest == d {
			r.writeBlob(w, req, "application/octet-stream", img.config, d)
			return
		}
		for _, l := range img.layers {
			if l.desc.Digest == d {
				r.serveLayer(ctx, w, req, l)
				return
			}
		}
		if b, ok := r.referrerBlob(ctx, img, d); ok {
			r.writeBlob(w, req, "application/octet-stream", b, d)
			return
		}
	}
	r.fail(w, req, http.StatusNotFound, codeBlobUnknown, "blob unknown")
}

// serveLayer streams a layer from its NAR. The tar is a function of the
// NAR, and the record's digest was made from the NAR that matched the
// narinfo, so the bytes hash to that digest unless the NAR changed since;
// then the client, which checks the digest, refuses them. A NAR that does
// not parse, or a tar of another size than recorded, cuts the response
// short.
func (r *Registry) serveLayer(ctx context.Context, w http.ResponseWriter, req *http.Request, l layer) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(l.desc.Size, 10))
	h.Set(headerDigest, l.desc.Digest.String())
	h.Set("Cache-Control", immutableCache)
	h.Set("ETag", `"`+l.desc.Digest.String()+`"`)
	if req.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	lw := &limitWriter{w: w, left: l.desc.Size}
	w.WriteHeader(http.StatusOK)
	_, err := writeLayer(ctx, r.st, l.ni, lw, false)
	if err == nil && lw.left != 0 {
		err = fmt.Errorf("%w: layer of %s is %d bytes, its record says %d", errLayer, l.ni.StorePath, l.desc.Size-lw.left, l.desc.Size)
	}
	if err != nil {
		if ctx.Err() == nil {
			r.log.Error("oci: layer not served", "path", l.ni.StorePath, "err", err)
		}
		panic(http.ErrAbortHandler) // cut the response: the client must not take it whole
	}
}

func (r *Registry) serveTags(ctx context.Context, w http.ResponseWriter, req *http.Request, name string) {
	var tags []string
	if p := nixRoot(name); p != "" {
		if _, err := r.st.Stat(ctx, cachelayout.NarinfoKey(p)); err != nil {
			r.storeFailure(w, req, codeNameUnknown, err)
			return
		}
		tags = []string{LatestTag}
	} else {
		var err error
		if tags, err = listTags(ctx, r.st, name); err != nil {
			r.storeFailure(w, req, codeNameUnknown, err)
			return
		}
		if len(tags) == 0 {
			r.fail(w, req, http.StatusNotFound, codeNameUnknown, "repository unknown")
			return
		}
	}
	b, _ := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{name, tags})
	w.Header().Set("Cache-Control", tagCacheControl)
	r.writeBody(w, req, "application/json", b)
}

func (r *Registry) writeBlob(w http.ResponseWriter, req *http.Request, contentType string, b []byte, d v1.Hash) {
	w.Header().Set(headerDigest, d.String())
	w.Header().Set("ETag", `"`+d.String()+`"`)
	if w.Header().Get("Cache-Control") == "" {
		w.Header().Set("Cache-Control", immutableCache)
	}
	r.writeBody(w, req, contentType, b)
}

func (r *Registry) writeBody(w http.ResponseWriter, req *http.Request, contentType string, b []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	if req.Method != http.MethodHead {
		w.Write(b)
	}
}

// storeFailure answers a failed lookup: not found (or not published) is
// 404 with code, anything else 500 and logged.
func (r *Registry) storeFailure(w http.ResponseWriter, req *http.Request, code string, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		r.fail(w, req, http.StatusNotFound, code, "unknown")
	case errors.Is(err, ErrTooLarge):
		r.fail(w, req, http.StatusNotFound, codeDenied, err.Error())
	case req.Context().Err() != nil:
		r.fail(w, req, http.StatusServiceUnavailable, codeUnsupported, "request cancelled")
	default:
		r.log.Error("oci: request failed", "path", req.URL.Path, "err", err)
		r.fail(w, req, http.StatusInternalServerError, codeUnsupported, "internal error")
	}
}

func (r *Registry) fail(w http.ResponseWriter, req *http.Request, status int, code, msg string) {
	b, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	if req.Method != http.MethodHead {
		w.Write(b)
	}
}

// limitWriter refuses to write past left bytes: a response never exceeds
// the Content-Length it promised.
type limitWriter struct {
	w    io.Writer
	left int64
}

var errLongLayer = errors.New("layer longer than its record")

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		return 0, errLongLayer
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}
