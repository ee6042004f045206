// Package server serves a store.Store over HTTP as a Nix binary cache, the
// read side that stock `nix` substitutes from.
//
// Only the paths of the cache layout are served, matched exactly, and every
// key handed to the store is built from a matched path; nothing from the
// request reaches the store unchecked, so no request can read outside it.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/storepath"
)

// Options configure Handler. The zero value is valid.
type Options struct {
	// Logger receives one debug record per request and error records for
	// store failures; nil discards them.
	Logger *slog.Logger
	// Priority is advertised in the generated nix-cache-info (lower is
	// preferred by Nix); zero means cachelayout.DefaultPriority. It is unused when the
	// store holds its own "nix-cache-info" object.
	Priority int
	// Metrics, when set, is told of every request; nil records nothing.
	Metrics RequestObserver
	// Registry, when set, serves /v2/ and everything under it (the OCI
	// distribution API of package oci); nil leaves those paths 404.
	Registry http.Handler
	// Served, when set, is told of the body bytes of every request and
	// whose they were (Reader): what the cache served whom, for usage
	// records (usage.ServeMeter).
	Served ServedObserver
}

// ServedObserver counts what a cache served: reader is the
// authenticated reader (see RequireReaders), "" without credentials.
type ServedObserver interface {
	ObserveServed(reader string, bytes int64)
}

// RequestObserver records served requests; *metrics.HTTP has it. kind is
// "narinfo", "nar" or "other" (nix-cache-info, provenance, anything
// unmatched).
type RequestObserver interface {
	ObserveRequest(kind string, status int, d time.Duration)
}

// Cache lifetimes. NARs are content-addressed (their name is the hash of
// their bytes), so they never change. A narinfo can be replaced (re-signed,
// re-compressed) and its absence must not be cached for long, because the
// pusher may add it any moment.
const (
	cacheInfoCacheControl = "public, max-age=300"
	narinfoCacheControl   = "public, max-age=60"
	narCacheControl       = "public, max-age=31536000, immutable"
	notFoundCacheControl  = "no-store"
)

// maxPathLen rejects absurd paths before any parsing; the longest valid
// path ("/nar/" + 128 chars + ".nar.zst") is far shorter.
const maxPathLen = 256

// Logging attribute keys.
const (
	attrMethod   = "method"
	attrPath     = "path"
	attrStatus   = "status"
	attrBytes    = "bytes"
	attrDuration = "duration"
	attrKey      = "key"
	attrError    = "error"
)

// objectKind is what a served path is, which fixes its headers.
type objectKind struct {
	contentType  string
	cacheControl string
}

var (
	kindCacheInfo  = objectKind{"text/x-nix-cache-info", cacheInfoCacheControl}
	kindNarinfo    = objectKind{"text/x-nix-narinfo", narinfoCacheControl}
	kindProvenance = objectKind{"application/json", narinfoCacheControl}
	kindNAR        = objectKind{"application/x-nix-nar", narCacheControl}
	// The verifier's published documents (cachelayout.PolicyKey, ...).
	kindVerifierJSON = objectKind{"application/json", narinfoCacheControl}
	kindVerifierKey  = objectKind{"application/x-pem-file", narinfoCacheControl}
)

// verifierObjects are the fixed keys of the documents a pusher publishes
// for its verification summaries.
var verifierObjects = map[string]objectKind{
	cachelayout.PolicyKey:       kindVerifierJSON,
	cachelayout.VerifierKey:     kindVerifierJSON,
	cachelayout.VSAPublicKeyKey: kindVerifierKey,
}

// Handler returns an http.Handler serving s as a Nix binary cache:
//
//	GET/HEAD /nix-cache-info                  the stored object, or a generated one
//	GET/HEAD /<hash32>.narinfo                text/x-nix-narinfo
//	GET/HEAD /<hash32>.provenance.json        application/json
//	GET/HEAD /<hash32>.vsa.json               application/json (a Sigstore bundle)
//	GET/HEAD /provenix/{policy,verifier}.json application/json
//	GET/HEAD /provenix/vsa.pub                application/x-pem-file
//	GET/HEAD /nar/<nix32>.nar{,.zst,.xz}      application/x-nix-nar
//
// where <hash32> is a 32-character store path hash and <nix32> 32 to 128
// characters of Nix's base32 alphabet. Other paths get 404, malformed ones
// (dot segments, double slashes, control bytes, overlong) 400, other methods
// 405. Bodies are streamed from the store.
func Handler(s store.Store, o Options) http.Handler {
	h := &handler{s: s, log: o.Logger, priority: o.Priority, metrics: o.Metrics, served: o.Served, registry: o.Registry}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.priority == 0 {
		h.priority = cachelayout.DefaultPriority
	}
	return h
}

type handler struct {
	s        store.Store
	log      *slog.Logger
	priority int
	metrics  RequestObserver
	served   ServedObserver
	registry http.Handler
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.registry != nil && (r.URL.Path == "/v2" || strings.HasPrefix(r.URL.Path, "/v2/")) {
		h.serveRegistry(w, r)
		return
	}
	start := time.Now()
	status, n := h.serve(w, r)
	if h.metrics != nil {
		h.metrics.ObserveRequest(requestKind(r.URL.Path), status, time.Since(start))
	}
	if h.served != nil {
		h.served.ObserveServed(Reader(r.Context()), n)
	}
	h.log.LogAttrs(r.Context(), slog.LevelDebug, "request",
		slog.String(attrMethod, r.Method),
		slog.String(attrPath, r.URL.Path),
		slog.Int(attrStatus, status),
		slog.Int64(attrBytes, n),
		slog.Duration(attrDuration, time.Since(start)))
}

// serveRegistry hands the request to the registry, counting what it
// served too (also when it cuts a response short by panicking).
func (h *handler) serveRegistry(w http.ResponseWriter, r *http.Request) {
	if h.served == nil {
		h.registry.ServeHTTP(w, r)
		return
	}
	cw := &countingResponseWriter{ResponseWriter: w}
	defer func() { h.served.ObserveServed(Reader(r.Context()), cw.n) }()
	h.registry.ServeHTTP(cw, r)
}

// countingResponseWriter counts the body bytes written.
type countingResponseWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingResponseWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// serve answers the request and returns the status and body bytes written,
// for the request log.
func (h *handler) serve(w http.ResponseWriter, r *http.Request) (int, int64) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return httpError(w, http.StatusMethodNotAllowed)
	}
	p := r.URL.Path
	if badPath(p) {
		return httpError(w, http.StatusBadRequest)
	}
	key, kind, ok := route(p)
	if !ok {
		return httpError(w, http.StatusNotFound)
	}
	status, n, err := h.serveObject(r.Context(), w, r.Method == http.MethodHead, key, kind)
	if errors.Is(err, store.ErrNotFound) && key == cachelayout.CacheInfoKey {
		return h.serveCacheInfo(w, r.Method == http.MethodHead)
	}
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotFound):
		return httpError(w, http.StatusNotFound)
	case status != 0:
		// Headers are out, so the client can only notice a short body;
		// net/http closes the connection because of the Content-Length.
		// Usually the client went away, hence debug level.
		h.log.LogAttrs(r.Context(), slog.LevelDebug, "body not fully sent",
			slog.String(attrKey, key), slog.String(attrError, err.Error()))
	case r.Context().Err() != nil:
		return httpError(w, http.StatusServiceUnavailable)
	default:
		h.log.LogAttrs(r.Context(), slog.LevelError, "store read failed",
			slog.String(attrKey, key), slog.String(attrError, err.Error()))
		return httpError(w, http.StatusInternalServerError)
	}
	return status, n
}

// serveObject writes the object under key. It returns a non-zero status
// once headers are written; an error with status 0 leaves the response to
// the caller.
func (h *handler) serveObject(ctx context.Context, w http.ResponseWriter, head bool, key string, kind objectKind) (int, int64, error) {
	var (
		body io.ReadCloser
		fi   store.Info
		err  error
	)
	if head {
		fi, err = h.s.Stat(ctx, key)
	} else {
		// Open before writing headers, so a missing object still gets a
		// clean 404; the size comes from the object opened.
		body, fi, err = store.OpenInfo(ctx, h.s, key)
	}
	if err != nil {
		return 0, 0, err
	}
	if body != nil {
		defer body.Close()
	}
	hd := w.Header()
	hd.Set("Content-Type", kind.contentType)
	hd.Set("Content-Length", strconv.FormatInt(fi.Size, 10))
	hd.Set("Cache-Control", kind.cacheControl)
	hd.Set("X-Content-Type-Options", "nosniff")
	if !fi.ModTime.IsZero() {
		hd.Set("Last-Modified", fi.ModTime.UTC().Format(http.TimeFormat))
	}
	w.WriteHeader(http.StatusOK)
	if head {
		return http.StatusOK, 0, nil
	}
	// Exactly Size bytes, the Content-Length promised: with a store that
	// is not an InfoOpener the object may be replaced between Stat and
	// Open; then a longer body is cut and a shorter one fails the response
	// instead of corrupting it silently.
	n, err := sendBody(w, body, fi.Size)
	if err != nil {
		return http.StatusOK, n, fmt.Errorf("sending %s: %w", key, err)
	}
	return http.StatusOK, n, nil
}

// sendBody copies exactly size bytes of body to w. A body that writes
// itself (io.WriterTo: a NAR of store/chunked, whose chunk files go to the
// socket by sendfile one after the other) writes through a limitWriter
// that cuts it at size; a file is copied as before, which sends it by
// sendfile already.
func sendBody(w io.Writer, body io.Reader, size int64) (int64, error) {
	wt, ok := body.(io.WriterTo)
	if _, file := body.(*os.File); !ok || file {
		return io.CopyN(w, body, size)
	}
	n, err := wt.WriteTo(&limitWriter{w: w, left: size})
	if err == nil && n < size {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// limitWriter passes at most left bytes to w, and fails past them.
type limitWriter struct {
	w    io.Writer
	left int64
}

var errBodyTooLong = errors.New("body longer than its Content-Length")

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		n, _ := l.w.Write(p[:l.left])
		l.left -= int64(n)
		return n, errBodyTooLong
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}

// ReadFrom keeps w's own ReadFrom in use: a socket sends a file, or an
// io.LimitedReader of one (not two nested), by sendfile.
func (l *limitWriter) ReadFrom(r io.Reader) (int64, error) {
	lr := &io.LimitedReader{R: r, N: l.left}
	outer, limited := r.(*io.LimitedReader)
	if limited {
		lr = &io.LimitedReader{R: outer.R, N: min(outer.N, l.left)}
	}
	n, err := io.Copy(l.w, lr)
	l.left -= n
	if limited {
		outer.N -= n
	}
	if err == nil && l.left == 0 {
		var one [1]byte
		if m, _ := r.Read(one[:]); m > 0 {
			err = errBodyTooLong
		}
	}
	return n, err
}

func (h *handler) serveCacheInfo(w http.ResponseWriter, head bool) (int, int64) {
	body := cachelayout.CacheInfo(h.priority)
	hd := w.Header()
	hd.Set("Content-Type", kindCacheInfo.contentType)
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	hd.Set("Cache-Control", kindCacheInfo.cacheControl)
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if head {
		return http.StatusOK, 0
	}
	n, _ := io.WriteString(w, body)
	return http.StatusOK, int64(n)
}

func httpError(w http.ResponseWriter, status int) (int, int64) {
	hd := w.Header()
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	hd.Set("Cache-Control", notFoundCacheControl)
	hd.Set("X-Content-Type-Options", "nosniff")
	msg := http.StatusText(status) + "\n"
	hd.Set("Content-Length", strconv.Itoa(len(msg)))
	w.WriteHeader(status)
	n, _ := io.WriteString(w, msg) // net/http drops the body of a HEAD reply
	return status, int64(n)
}

// badPath reports paths that no client of a binary cache sends and that
// smell of traversal or confusion: these get 400 rather than 404 so that
// they stand out in logs. route rejects them anyway.
func badPath(p string) bool {
	if len(p) > maxPathLen || !strings.HasPrefix(p, "/") || strings.Contains(p, "//") {
		return true
	}
	for _, seg := range strings.Split(p[1:], "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	for i := 0; i < len(p); i++ {
		if p[i] < 0x20 || p[i] == 0x7f || p[i] == '\\' {
			return true
		}
	}
	return false
}

// route maps a request path to its store key and kind. The key is the path
// without its leading slash, but only after the path matched one of the
// cache layout's shapes exactly.
func route(p string) (key string, kind objectKind, ok bool) {
	name, found := strings.CutPrefix(p, "/")
	if !found {
		return "", objectKind{}, false
	}
	if name == cachelayout.CacheInfoKey {
		return name, kindCacheInfo, true
	}
	if h, found := strings.CutSuffix(name, cachelayout.NarinfoSuffix); found && storepath.CheckHashPart(h) == nil {
		return name, kindNarinfo, true
	}
	if h, found := strings.CutSuffix(name, cachelayout.ProvenanceSuffix); found && storepath.CheckHashPart(h) == nil {
		return name, kindProvenance, true
	}
	if h, found := strings.CutSuffix(name, cachelayout.VSASuffix); found && storepath.CheckHashPart(h) == nil {
		return name, kindProvenance, true
	}
	if kind, ok := verifierObjects[name]; ok {
		return name, kind, true
	}
	if file, found := strings.CutPrefix(name, cachelayout.NARPrefix); found {
		for _, ext := range cachelayout.NARSuffixes() {
			if h, found := strings.CutSuffix(file, ext); found && isNix32(h, 32, 128) {
				return name, kindNAR, true
			}
		}
	}
	return "", objectKind{}, false
}

// requestKind names what a request asked for, for metrics.
func requestKind(p string) string {
	if badPath(p) {
		return "other"
	}
	switch _, kind, _ := route(p); kind {
	case kindNarinfo:
		return "narinfo"
	case kindNAR:
		return "nar"
	}
	return "other"
}

func isNix32(s string, minLen, maxLen int) bool {
	if len(s) < minLen || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nixbase32.Is(s[i]) {
			return false
		}
	}
	return true
}
