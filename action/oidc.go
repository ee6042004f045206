package action

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// ErrNoOIDC: keyless signing needs the job's OIDC token, which Forgejo
// (≥ 15, enable-openid-connect) offers through ACTIONS_ID_TOKEN_REQUEST_*.
var ErrNoOIDC = errors.New("signing: keyless needs the job's OIDC token: ACTIONS_ID_TOKEN_REQUEST_URL and _TOKEN are not set (Forgejo ≥ 15 with enable-openid-connect: true on the workflow)")

// OIDCToken asks the forge for the job's OIDC ID token for audience, the
// way GitHub's and Forgejo's toolkits do: GET the request URL with
// &audience=…, bearer the request token, read {"value": …}.
func OIDCToken(ctx context.Context, getenv func(string) string, audience string) (string, error) {
	u, bearer := getenv("ACTIONS_ID_TOKEN_REQUEST_URL"), getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
	if u == "" || bearer == "" {
		return "", ErrNoOIDC
	}
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+sep+"audience="+url.QueryEscape(audience), nil)
	if err != nil {
		return "", fmt.Errorf("OIDC token request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("OIDC token request: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("OIDC token request: the forge answered %s", resp.Status)
	}
	var body struct {
		Value string `json:"value"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err != nil || body.Value == "" {
		return "", fmt.Errorf("OIDC token request: no token in the answer (%v)", err)
	}
	return body.Value, nil
}
