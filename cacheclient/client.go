// Package cacheclient reads a Nix binary cache over HTTP and checks what it
// reads: a narinfo must name the asked path and carry a signature from a
// trusted cache key, a NAR must hash to its narinfo's NarHash and NarSize,
// and (in Verify) the provenance sidecar must attest that NAR.
//
// It is the client side of the layout cache-push writes (docs/cache-layout.md)
// and reads any stock Nix binary cache as well (cache.nixos.org serves xz).
// It deliberately imports nothing from cache-push, so that the pusher can use
// it to check upstream caches.
package cacheclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/storepath"
)

// Errors, matchable with errors.Is. Each is wrapped with the URL it
// concerns.
var (
	// ErrNotFound: the cache answered 404.
	ErrNotFound = errors.New("not in the cache")
	// ErrUntrusted: no Sig line of the narinfo verifies against any of
	// the trusted cache keys.
	ErrUntrusted = errors.New("narinfo not signed by a trusted cache key")
	// ErrMismatch: what the cache serves is not what was asked or what its
	// narinfo states: a narinfo for another store path, or a NAR whose
	// size or hash differs from NarSize and NarHash.
	ErrMismatch = errors.New("cache content does not match")
	// ErrMalformed: the cache served something that does not parse (a
	// narinfo or provenance sidecar), or is larger than any valid one.
	ErrMalformed = errors.New("malformed cache object")
	// ErrInvalidPath: the caller asked for something that is not a store
	// path of /nix/store.
	ErrInvalidPath = errors.New("not a valid store path")
)

// maxSmallObject bounds how much of a narinfo or provenance sidecar is
// read. A narinfo with thousands of references stays far below it.
const maxSmallObject = 4 << 20

// Options configure New.
type Options struct {
	// URL is the cache's base URL (http or https); a trailing slash is
	// ignored.
	URL string
	// PublicKeys are the trusted cache keys in Nix's "name:base64" form
	// (the format of trusted-public-keys). A narinfo is accepted when at
	// least one of its Sig lines verifies against one of them.
	//
	// When PublicKeys is empty no narinfo signature is checked at all:
	// use that only when trust comes from elsewhere (provenance bundles
	// checked by Verify, or a content address).
	PublicKeys []string
	// HTTP is the client used for every request; nil means one that keeps
	// enough idle connections for concurrent closure walks.
	HTTP *http.Client
	// RequestTimeout, when HTTP is nil, bounds each request including the
	// reading of its body (a NAR download); 0 means only the context
	// bounds them.
	RequestTimeout time.Duration
	// Logger receives debug records of requests; nil discards them.
	Logger *slog.Logger
}

// Client reads one binary cache. It is safe for concurrent use.
type Client struct {
	base string
	keys []signature.PublicKey
	http *http.Client
	log  *slog.Logger
}

// New checks o and returns a client.
func New(o Options) (*Client, error) {
	base := strings.TrimRight(strings.TrimSpace(o.URL), "/")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("cache URL %q: want http(s)://HOST[/PATH]", o.URL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("cache URL %q: no query or fragment allowed", o.URL)
	}
	c := &Client{base: base, http: o.HTTP, log: o.Logger}
	for _, k := range o.PublicKeys {
		pk, err := signature.ParsePublicKey(strings.TrimSpace(k))
		if err != nil {
			return nil, fmt.Errorf("cache public key %q: %w", k, err)
		}
		c.keys = append(c.keys, pk)
	}
	if c.http == nil {
		// The default transport keeps 2 idle connections per host: a
		// closure walk with more requests in flight would dial anew for
		// most of them.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 32
		c.http = &http.Client{Transport: t, Timeout: o.RequestTimeout}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// URL is the cache's base URL, without a trailing slash.
func (c *Client) URL() string { return c.base }

// ChecksSignatures says whether narinfos are checked against trusted keys.
func (c *Client) ChecksSignatures() bool { return len(c.keys) > 0 }

// checkPath returns storepath.Check's verdict on p, matching ErrInvalidPath
// too: callers of this package tell "you asked for a non-path" from what
// a cache served.
func checkPath(p string) error {
	if err := storepath.Check(p); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidPath, err)
	}
	return nil
}

// get issues GET base/rel; a non-200 answer is an error (ErrNotFound for
// 404), with the body closed.
func (c *Client) get(ctx context.Context, rel string) (*http.Response, string, error) {
	u := c.base + "/" + rel
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, u, fmt.Errorf("GET %s: %w", u, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, u, fmt.Errorf("GET %s: %w", u, err)
	}
	c.log.DebugContext(ctx, "cache GET", "url", u, "status", resp.StatusCode)
	switch resp.StatusCode {
	case http.StatusOK:
		return resp, u, nil
	case http.StatusNotFound:
		resp.Body.Close()
		return nil, u, fmt.Errorf("GET %s: %w", u, ErrNotFound)
	default:
		resp.Body.Close()
		return nil, u, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
}

// small reads an object of at most maxSmallObject bytes.
func (c *Client) small(ctx context.Context, rel string) ([]byte, string, error) {
	resp, u, err := c.get(ctx, rel)
	if err != nil {
		return nil, u, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxSmallObject+1))
	if err != nil {
		return nil, u, fmt.Errorf("GET %s: %w", u, err)
	}
	if len(b) > maxSmallObject {
		return nil, u, fmt.Errorf("%s: %w: larger than %d bytes", u, ErrMalformed, maxSmallObject)
	}
	return b, u, nil
}

// Narinfo fetches and checks the narinfo of storePath: it must parse, be
// well formed (valid store paths, a sha256 NarHash), name storePath itself
// (ErrMismatch otherwise) and, when the client has PublicKeys, carry a
// signature from one of them over its fingerprint (ErrUntrusted otherwise).
// A missing narinfo gives ErrNotFound.
func (c *Client) Narinfo(ctx context.Context, storePath string) (*narinfo.NarInfo, error) {
	if err := checkPath(storePath); err != nil {
		return nil, err
	}
	b, u, err := c.small(ctx, cachelayout.NarinfoKey(storePath))
	if err != nil {
		return nil, err
	}
	ni, err := ParseNarinfo(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", u, err)
	}
	if ni.StorePath != storePath {
		return nil, fmt.Errorf("%s: %w: narinfo for %s names %s", u, ErrMismatch, storePath, ni.StorePath)
	}
	if err := c.CheckSignature(ni); err != nil {
		return nil, fmt.Errorf("%s: %w", u, err)
	}
	return ni, nil
}

// ParseNarinfo parses and checks the shape of a narinfo: errors match
// ErrMalformed.
//
// It reads what go-nix's narinfo.Parse reads, into the same type, but
// without its 1 MiB buffer per call (walking a closure parses thousands),
// and, like Nix, it ignores keys it does not know.
func ParseNarinfo(b []byte) (*narinfo.NarInfo, error) {
	ni, err := parseNarinfo(b)
	if err != nil {
		return nil, fmt.Errorf("%w: narinfo: %v", ErrMalformed, err)
	}
	if err := ni.Check(); err != nil {
		return nil, fmt.Errorf("%w: narinfo: %v", ErrMalformed, err)
	}
	// go-nix's Check misses what storepath.Check adds (prefix, dash, name
	// rules); references and deriver are basenames in a narinfo.
	if err := storepath.Check(ni.StorePath); err != nil {
		return nil, fmt.Errorf("%w: narinfo StorePath: %v", ErrMalformed, err)
	}
	for _, r := range ni.References {
		if err := storepath.CheckBase(r); err != nil {
			return nil, fmt.Errorf("%w: narinfo of %s: reference: %v", ErrMalformed, ni.StorePath, err)
		}
	}
	if ni.Deriver != "" {
		if err := storepath.CheckBase(ni.Deriver); err != nil {
			return nil, fmt.Errorf("%w: narinfo of %s: deriver: %v", ErrMalformed, ni.StorePath, err)
		}
	}
	if ni.NarHash == nil || ni.NarHash.Algo() != nixhash.SHA256 {
		return nil, fmt.Errorf("%w: narinfo for %s has no sha256 NarHash", ErrMalformed, ni.StorePath)
	}
	if ni.URL == "" {
		return nil, fmt.Errorf("%w: narinfo for %s has no URL", ErrMalformed, ni.StorePath)
	}
	return ni, nil
}

func parseNarinfo(b []byte) (*narinfo.NarInfo, error) {
	ni := &narinfo.NarInfo{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			return nil, fmt.Errorf("line %q: no key", line)
		}
		var err error
		switch k {
		case "StorePath":
			ni.StorePath = v
		case "URL":
			ni.URL = v
		case "Compression":
			ni.Compression = v
		case "FileHash":
			ni.FileHash, err = nixhash.ParseAny(v, nil)
		case "FileSize":
			ni.FileSize, err = strconv.ParseUint(v, 10, 64)
		case "NarHash":
			ni.NarHash, err = nixhash.ParseAny(v, nil)
		case "NarSize":
			ni.NarSize, err = strconv.ParseUint(v, 10, 64)
		case "References":
			if v != "" {
				ni.References = append(ni.References, strings.Split(v, " ")...)
			}
		case "Deriver":
			if v != "unknown-deriver" {
				ni.Deriver = v
			}
		case "System":
			ni.System = v
		case "Sig":
			var sig signature.Signature
			if sig, err = signature.ParseSignature(v); err == nil {
				ni.Signatures = append(ni.Signatures, sig)
			}
		case "CA":
			ni.CA = v
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", k, err)
		}
	}
	if ni.Compression == "" {
		ni.Compression = "bzip2" // Nix's default when the field is absent
	}
	return ni, nil
}

// CheckSignature returns nil when at least one Sig line of ni verifies
// against one of the client's keys over ni's fingerprint, or when the
// client has no keys; otherwise an error matching ErrUntrusted.
//
// Every signature is tried, not only the first one per key name (go-nix's
// VerifyFirst): a cache may carry several signatures from rotated keys.
func (c *Client) CheckSignature(ni *narinfo.NarInfo) error {
	if len(c.keys) == 0 {
		return nil
	}
	fp := ni.Fingerprint()
	for _, s := range ni.Signatures {
		for _, k := range c.keys {
			if k.Verify(fp, s) {
				return nil
			}
		}
	}
	names := make([]string, 0, len(c.keys))
	for _, k := range c.keys {
		names = append(names, k.Name)
	}
	return fmt.Errorf("%w: %d signature(s), none valid for %s", ErrUntrusted, len(ni.Signatures), strings.Join(names, ", "))
}

// References returns the absolute store paths ni refers to, itself
// included when it refers to itself.
func References(ni *narinfo.NarInfo) []string {
	out := make([]string, 0, len(ni.References))
	for _, r := range ni.References {
		out = append(out, storepath.Dir+"/"+r)
	}
	return out
}
