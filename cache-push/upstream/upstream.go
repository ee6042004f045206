// Package upstream reads narinfos from another binary cache and checks
// their signatures: what the pusher needs to count a path an upstream
// cache (declared in the policy) serves as present.
//
// It is a stopgap with the shape of cacheclient (Narinfo(ctx, storePath)
// with ErrNotFound and ErrUntrusted) until that package lands.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/cache-push/policy"
)

var (
	// ErrNotFound: the cache has no narinfo for the path.
	ErrNotFound = errors.New("upstream: not found")
	// ErrUntrusted: the narinfo is not signed by any of the cache's keys,
	// or describes another path.
	ErrUntrusted = errors.New("upstream: narinfo not trusted")
)

// maxNarinfo bounds a narinfo read.
const maxNarinfo = 1 << 20

// Client reads one cache.
type Client struct {
	url  string
	keys []signature.PublicKey
	hc   *http.Client
}

// New returns a client for the cache at url trusting keys ("name:base64");
// hc nil means a client with a 10 s timeout.
func New(url string, keys []string, hc *http.Client) (*Client, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("upstream %s: no public keys", url)
	}
	c := &Client{url: strings.TrimRight(url, "/"), hc: hc}
	if c.hc == nil {
		c.hc = &http.Client{Timeout: 10 * time.Second}
	}
	for _, k := range keys {
		pk, err := signature.ParsePublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: key %q: %w", url, k, err)
		}
		c.keys = append(c.keys, pk)
	}
	return c, nil
}

// FromPolicy makes a client per upstream of p, in its order.
func FromPolicy(p *policy.Policy, hc *http.Client) ([]*Client, error) {
	var out []*Client
	for _, u := range p.Upstreams {
		c, err := New(u.URL, u.PublicKeys, hc)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// URL is the cache's base URL.
func (c *Client) URL() string { return c.url }

// Narinfo fetches storePath's narinfo and verifies it.
func (c *Client) Narinfo(ctx context.Context, storePath string) (*narinfo.NarInfo, error) {
	base := path.Base(storePath)
	if len(base) < 33 || base[32] != '-' {
		return nil, fmt.Errorf("upstream: %q is not a store path", storePath)
	}
	u := c.url + "/" + base[:32] + ".narinfo"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden:
		return nil, fmt.Errorf("%s: %w", u, ErrNotFound)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("upstream: %s: %s", u, resp.Status)
	}
	ni, err := narinfo.Parse(io.LimitReader(resp.Body, maxNarinfo))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUntrusted, u, err)
	}
	if ni.StorePath != storePath {
		return nil, fmt.Errorf("%w: %s describes %s", ErrUntrusted, u, ni.StorePath)
	}
	fp := ni.Fingerprint()
	for _, s := range ni.Signatures {
		for _, k := range c.keys {
			if k.Name == s.Name && k.Verify(fp, s) {
				return ni, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: %s is signed by none of %d key(s)", ErrUntrusted, u, len(c.keys))
}
