// Package forgestatus shows the pusher's final verdict on a path as a
// commit status on the forge that built it: provenix/<system> is
// "success" when the path is published, "failure" when builders dispute
// it and "error" when it waited for its references past the policy's
// closure timeout.
//
// The commit comes from the signed forge job of each builder's
// provenance (attest.Workflow: forge URL, repository, commit). A builder
// trusted to build is not thereby trusted to speak for any commit on any
// forge, so a status is set only when all of these hold (docs/forges.md):
//   - the forge's URL is listed in the forges file, which holds its
//     token: no other forge is ever contacted, and a token goes only to
//     its own forge (redirects are not followed);
//   - the builder id that signed is listed for that forge (builders);
//   - the repository matches one of the forge's patterns (repos).
//
// Reporting never slows the pusher: verdicts queue (bounded; dropped
// with a log when full), a few workers send them, each with bounded
// retries. Per commit and system the verdicts on all its paths are kept
// in a JetStream KV record, so that the status sums them up (one disputed
// path of many is a failure), a stale verdict never overrides a
// publication, and pushers in a group or after a restart agree: a worker
// that finds the record changed while it sent sends again.
package forgestatus

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// ErrConfig is the root of every refusal of a forges file.
var ErrConfig = errors.New("forges file")

// Example is a commented forges file.
const Example = `# Provenix forges file: where the pusher shows its verdicts as commit
# statuses (provenix/<system>). Only these forges are ever contacted.
# cache_url is the cache's public URL: a status links to the path's
# provenance sidecar there.
cache_url: https://cache.example.org
forges:
  - url: https://forge.example.org
    # An access token with write:repository scope, in a file of its own.
    token_file: /run/credentials/provenix/forge.token
    # Builder ids whose signed forge job may name this forge ("*": any
    # builder the policy trusts).
    builders: ["forge:distro/pkgs"]
    # Repositories (owner/name globs) whose commits may get a status.
    repos: ["distro/*"]
`

// Forge is one forge the pusher reports to.
type Forge struct {
	URL       string   `yaml:"url"`
	TokenFile string   `yaml:"token_file"`
	Builders  []string `yaml:"builders"`
	Repos     []string `yaml:"repos"`

	token string
}

// Forges is a parsed, checked forges file: immutable.
type Forges struct {
	// CacheURL is the cache's public base URL (no trailing slash), or "":
	// statuses then carry no link.
	CacheURL string  `yaml:"cache_url"`
	Forges   []Forge `yaml:"forges"`
}

// Load reads and checks a forges file; token files are read now, relative
// to the file's directory.
func Load(file string) (*Forges, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return Parse(b, filepath.Dir(file))
}

// Parse checks a forges file whose relative token files are under dir.
func Parse(b []byte, dir string) (*Forges, error) {
	var fs Forges
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&fs); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if fs.CacheURL != "" {
		u, err := NormalizeURL(fs.CacheURL)
		if err != nil {
			return nil, fmt.Errorf("%w: cache_url: %w", ErrConfig, err)
		}
		fs.CacheURL = u
	}
	seen := map[string]bool{}
	for i := range fs.Forges {
		f := &fs.Forges[i]
		u, err := NormalizeURL(f.URL)
		if err != nil {
			return nil, fmt.Errorf("%w: forge %d: %w", ErrConfig, i+1, err)
		}
		if seen[u] {
			return nil, fmt.Errorf("%w: forge %s listed twice", ErrConfig, u)
		}
		seen[u], f.URL = true, u
		if len(f.Builders) == 0 || len(f.Repos) == 0 {
			return nil, fmt.Errorf("%w: forge %s: builders and repos are required (\"*\" and \"*/*\" allow any)", ErrConfig, u)
		}
		for _, r := range f.Repos {
			if _, err := path.Match(r, "a/b"); err != nil || strings.Count(r, "/") != 1 {
				return nil, fmt.Errorf("%w: forge %s: repos %q: want an owner/name glob", ErrConfig, u, r)
			}
		}
		if f.TokenFile == "" {
			return nil, fmt.Errorf("%w: forge %s: no token_file", ErrConfig, u)
		}
		tf := f.TokenFile
		if !filepath.IsAbs(tf) {
			tf = filepath.Join(dir, tf)
		}
		tok, err := os.ReadFile(tf)
		if err != nil {
			return nil, fmt.Errorf("%w: forge %s: %w", ErrConfig, u, err)
		}
		if f.token = strings.TrimSpace(string(tok)); f.token == "" {
			return nil, fmt.Errorf("%w: forge %s: token file %s is empty", ErrConfig, u, tf)
		}
	}
	return &fs, nil
}

// NormalizeURL is the form forge URLs are compared in: http(s), host in
// lower case, no trailing slash, no user, query or fragment. The signed
// provenance's forge URL is normalised the same way before it is looked
// up, so "HTTPS://Forge.example/" finds "https://forge.example".
func NormalizeURL(s string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return "", fmt.Errorf("URL %q: %w", s, err)
	}
	u.Scheme, u.Host = strings.ToLower(u.Scheme), strings.ToLower(u.Host)
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", fmt.Errorf("URL %q: want http(s)://host[/path] without user, query or fragment", s)
	}
	u.Path, u.RawPath = strings.TrimRight(u.Path, "/"), ""
	return u.String(), nil
}

// find is the forge at the normalised url, or nil.
func (fs *Forges) find(u string) *Forge {
	for i := range fs.Forges {
		if fs.Forges[i].URL == u {
			return &fs.Forges[i]
		}
	}
	return nil
}

// allows reports whether builder may report on repo ("owner/name") here.
func (f *Forge) allows(builder, repo string) bool {
	if !slices.Contains(f.Builders, "*") && !slices.Contains(f.Builders, builder) {
		return false
	}
	// Forges name repositories case-insensitively.
	for _, r := range f.Repos {
		if ok, _ := path.Match(strings.ToLower(r), strings.ToLower(repo)); ok {
			return true
		}
	}
	return false
}
