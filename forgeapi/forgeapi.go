// Package forgeapi is the forge's REST API client: it reports what Provenix found back to the forge, through
// the forge's REST API (code.gitea.io/sdk/gitea): commit statuses per
// system, Sigstore bundles as release assets, and runner registration
// tokens for `provenix runner register --forgejo-token`.
//
// Every call takes a context first; without a deadline it gets
// DefaultTimeout. Errors say which call failed and on what, and wrap
// ErrUnauthorized (401/403: wrong, expired or under-scoped token) or
// ErrNotFound (404: no such repository, commit, release or endpoint), so
// callers can match them with errors.Is.
//
// API used, all under /api/v1:
//   - SetStatus: POST /repos/{owner}/{repo}/statuses/{sha}
//     (same on Gitea and Forgejo).
//   - AttachBundles: GET /repos/{owner}/{repo}/releases/tags/{tag},
//     GET and POST /repos/{owner}/{repo}/releases/{id}/assets
//     (same on Gitea and Forgejo).
//   - RegistrationToken: here the two forges differ.
//     Gitea 1.26 (routers/api/v1/api.go) has only POST, under
//     /admin/actions/runners/registration-token (instance, site admin),
//     /orgs/{org}/actions/runners/registration-token and
//     /repos/{owner}/{repo}/actions/runners/registration-token; the older GET
//     /admin/runners/registration-token is gone.
//     Forgejo has GET, with the admin path without "actions":
//     /admin/runners/registration-token,
//     /orgs/{org}/actions/runners/registration-token and
//     /repos/{owner}/{repo}/actions/runners/registration-token.
//     The SDK only knows Gitea's POST, so RegistrationToken asks in the
//     dialect the server's version suggests (Forgejo reports
//     "X.Y.Z+gitea-A.B.C") and, when the endpoint answers 404 or 405, in
//     the other one.
//
// Gitea and Forgejo store a status description as TEXT without a limit,
// but GitHub's API caps it at 140 characters and forge UIs show it in one
// line, so SetStatus truncates descriptions to MaxDescription runes.
package forgeapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"code.gitea.io/sdk/gitea"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// Errors callers can match with errors.Is.
var (
	// ErrUnauthorized: the forge refused the token (401) or the token may
	// not do this (403).
	ErrUnauthorized = errors.New("forge refused the access token")
	// ErrNotFound: the forge has no such repository, commit, release, tag
	// or endpoint.
	ErrNotFound = errors.New("not found on the forge")
	// ErrNoRelease: the tag has no release to attach assets to.
	ErrNoRelease = fmt.Errorf("%w: no release for the tag", ErrNotFound)
	// ErrAssetConflict: the release already has an asset of that name with
	// a different size; it is never replaced silently.
	ErrAssetConflict = errors.New("release already has a different asset of that name")
	// ErrInvalid: the arguments are wrong before the forge is asked.
	ErrInvalid = errors.New("invalid argument")
)

// Client talks to one forge with one access token. It is safe for
// concurrent use.
type Client struct {
	base    string // no trailing slash
	token   string
	http    *http.Client
	version string // as the server reported it
	forgejo bool
	ua      string
}

// Option configures New.
type Option func(*Client)

// WithHTTPClient sets the HTTP client (transport, proxies, TLS).
func WithHTTPClient(c *http.Client) Option { return func(cl *Client) { cl.http = c } }

// WithInsecureSkipVerifyUnsafe, when on, accepts any TLS certificate of
// the forge. For test instances only.
func WithInsecureSkipVerifyUnsafe(on bool) Option {
	return func(cl *Client) {
		if on {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // opt-in, named Unsafe
			cl.http = &http.Client{Transport: tr}
		}
	}
}

// WithUserAgent sets the User-Agent of every request.
func WithUserAgent(ua string) Option { return func(cl *Client) { cl.ua = ua } }

// New connects to the forge at serverURL (e.g. https://forgejo.example.org)
// and learns its version; the token is sent on every later call.
func New(ctx context.Context, serverURL, token string, opts ...Option) (*Client, error) {
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("forgeapi: server %q: %w: want an http(s) URL", serverURL, ErrInvalid)
	}
	if strings.TrimSpace(token) == "" {
		return nil, fmt.Errorf("forgeapi: %w: empty access token", ErrInvalid)
	}
	c := &Client{base: strings.TrimRight(serverURL, "/"), token: strings.TrimSpace(token), http: &http.Client{}, ua: "provenix"}
	for _, o := range opts {
		o(c)
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	sdk, err := gitea.NewClient(c.base, c.sdkOptions(ctx, gitea.SetGiteaVersion(""))...)
	if err != nil {
		return nil, fmt.Errorf("forgeapi: %s: %w", c.base, err)
	}
	v, resp, err := sdk.ServerVersion()
	if err != nil {
		return nil, apiError("ask the version of "+c.base, resp, err)
	}
	c.version = v
	c.forgejo = isForgejo(v)
	return c, nil
}

// Version is the forge's version as it reported it.
func (c *Client) Version() string { return c.version }

// IsForgejo reports whether the server's version looks like Forgejo's.
func (c *Client) IsForgejo() bool { return c.forgejo }

// isForgejo recognises Forgejo's version strings, "7.0.0+gitea-1.22.0" or
// "11.0.1-...+gitea-1.22.0".
func isForgejo(v string) bool {
	v = strings.ToLower(v)
	return strings.Contains(v, "+gitea-") || strings.Contains(v, "forgejo")
}

// sdk returns an SDK client bound to ctx. The SDK keeps one context per
// client, so each call gets its own (cheap: no request is made).
func (c *Client) sdk(ctx context.Context) *gitea.Client {
	// The version is known; an unparsable one (some Forgejo builds) turns
	// the SDK's version gates off instead of failing.
	ver := gitea.SetGiteaVersion(c.version)
	sdk, err := gitea.NewClient(c.base, c.sdkOptions(ctx, ver)...)
	if err != nil {
		sdk, _ = gitea.NewClient(c.base, c.sdkOptions(ctx, gitea.SetGiteaVersion(""))...)
	}
	return sdk
}

func (c *Client) sdkOptions(ctx context.Context, extra ...gitea.ClientOption) []gitea.ClientOption {
	return append([]gitea.ClientOption{
		gitea.SetHTTPClient(c.http),
		gitea.SetToken(c.token),
		gitea.SetContext(ctx),
		gitea.SetUserAgent(c.ua),
	}, extra...)
}

// withTimeout gives ctx DefaultTimeout unless it has a deadline.
func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// apiError wraps an SDK error with what was being done and, from the HTTP
// status, a sentinel.
func apiError(what string, resp *gitea.Response, err error) error {
	if resp != nil && resp.Response != nil {
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("forgeapi: %s: %w (HTTP %d): %v", what, ErrUnauthorized, resp.StatusCode, err)
		case http.StatusNotFound:
			return fmt.Errorf("forgeapi: %s: %w (HTTP 404): %v", what, ErrNotFound, err)
		}
		return fmt.Errorf("forgeapi: %s: HTTP %d: %w", what, resp.StatusCode, err)
	}
	return fmt.Errorf("forgeapi: %s: %w", what, err)
}

// splitRepo checks owner and repo are non-empty.
func checkRepo(owner, repo string) error {
	if owner == "" || repo == "" || strings.Contains(owner, "/") || strings.Contains(repo, "/") {
		return fmt.Errorf("forgeapi: repository %q/%q: %w", owner, repo, ErrInvalid)
	}
	return nil
}
