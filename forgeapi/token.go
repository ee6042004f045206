package forgeapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"code.gitea.io/sdk/gitea"
)

// errWrongDialect: the endpoint does not exist in this dialect (404/405).
var errWrongDialect = errors.New("no such endpoint")

// RegistrationToken fetches a runner registration token for scope:
//   - "": the instance (the token's user must be a site admin);
//   - "ORG" (no slash): the organisation ORG (an owner of it);
//   - "OWNER/REPO": the repository (an admin of it).
//
// The forge returns its current token, creating one if it has none. See
// the package doc for the endpoints of Gitea and Forgejo.
func (c *Client) RegistrationToken(ctx context.Context, scope string) (string, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	var forgejo string // Forgejo's API path, without /api/v1
	var viaSDK func(*gitea.Client) (*gitea.RegistrationToken, *gitea.Response, error)
	var what, kind string
	switch owner, repo, isRepo := strings.Cut(scope, "/"); {
	case scope == "":
		what, kind = "the instance", "instance API (is Actions enabled?)"
		viaSDK = (*gitea.Client).CreateAdminActionRunnerRegistrationToken
		forgejo = "/admin/runners/registration-token"
	case !isRepo:
		what, kind = "organisation "+scope, "organisation"
		viaSDK = func(g *gitea.Client) (*gitea.RegistrationToken, *gitea.Response, error) {
			return g.CreateOrgActionRunnerRegistrationToken(scope)
		}
		forgejo = "/orgs/" + url.PathEscape(scope) + "/actions/runners/registration-token"
	default:
		if err := checkRepo(owner, repo); err != nil {
			return "", err
		}
		what, kind = "repository "+scope, "repository"
		viaSDK = func(g *gitea.Client) (*gitea.RegistrationToken, *gitea.Response, error) {
			return g.CreateRepoActionRunnerRegistrationToken(owner, repo)
		}
		forgejo = "/repos/" + url.PathEscape(owner) + "/" + url.PathEscape(repo) + "/actions/runners/registration-token"
	}
	what = "runner registration token of " + what

	// Ask in the server's dialect first, then in the other.
	type dialect struct {
		name string
		ask  func() (string, error)
	}
	tries := []dialect{
		{"Gitea (POST)", func() (string, error) {
			tok, resp, err := viaSDK(c.sdk(ctx))
			if err != nil {
				return "", sdkTokenError(resp, err)
			}
			if tok == nil || tok.Token == "" {
				return "", errors.New("no token in the answer")
			}
			return tok.Token, nil
		}},
		{"Forgejo (GET /api/v1" + forgejo + ")", func() (string, error) { return c.tokenRequest(ctx, http.MethodGet, forgejo) }},
	}
	if c.forgejo {
		tries[0], tries[1] = tries[1], tries[0]
	}
	for _, d := range tries {
		tok, err := d.ask()
		if err == nil {
			return tok, nil
		}
		err = fmt.Errorf("forgeapi: %s, %s API: %w", what, d.name, err)
		if !errors.Is(err, errWrongDialect) {
			return "", err
		}
	}
	// Neither dialect has it: the scope names nothing, or the forge has no
	// such API.
	return "", fmt.Errorf("forgeapi: %s: %w: both Gitea's and Forgejo's endpoint answer 404/405: no such %s, or the forge has no runner token API", what, ErrNotFound, kind)
}

// sdkTokenError maps an SDK error of the token endpoints like tokenRequest
// maps HTTP answers.
func sdkTokenError(resp *gitea.Response, err error) error {
	if resp != nil && resp.Response != nil {
		switch resp.StatusCode {
		case http.StatusMethodNotAllowed:
			return fmt.Errorf("%w: HTTP 405", errWrongDialect)
		case http.StatusNotFound:
			return fmt.Errorf("%w (HTTP 404: %v): %w", ErrNotFound, err, errWrongDialect)
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w (HTTP %d: %v)", ErrUnauthorized, resp.StatusCode, err)
		}
		return fmt.Errorf("HTTP %d: %w", resp.StatusCode, err)
	}
	return err
}

// tokenRequest does one request for a registration token in Forgejo's
// dialect. The SDK has no GET for it, so this is plain HTTP with the same
// client and token.
func (c *Client) tokenRequest(ctx context.Context, method, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/api/v1"+path, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "token "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)
	resp, err := c.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	msg := apiMessage(body)
	switch {
	case resp.StatusCode == http.StatusMethodNotAllowed:
		return "", fmt.Errorf("%w: HTTP 405", errWrongDialect)
	case resp.StatusCode == http.StatusNotFound:
		// 404 is both "no such route" and "no such repository/org"; the
		// caller tries the other dialect and reports the first.
		return "", fmt.Errorf("%w (HTTP 404: %s): %w", ErrNotFound, msg, errWrongDialect)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return "", fmt.Errorf("%w (HTTP %d: %s)", ErrUnauthorized, resp.StatusCode, msg)
	case resp.StatusCode/100 != 2:
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, msg)
	}
	var tok gitea.RegistrationToken
	if err := json.Unmarshal(body, &tok); err != nil || tok.Token == "" {
		return "", fmt.Errorf("no token in the answer (HTTP %d): %.200q", resp.StatusCode, body)
	}
	return tok.Token, nil
}

// apiMessage is the "message" of a Gitea/Forgejo error body, or the body.
func apiMessage(body []byte) string {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("%.200s", strings.TrimSpace(string(body)))
}
