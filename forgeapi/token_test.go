package forgeapi_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/forgeapi"
	"codeberg.org/provenix/provenix/internal/testctx"
)

// fakeForgejo answers like Forgejo's API for registration tokens: GET only,
// the instance's without "actions" in the path. It records the requests.
type fakeForgejo struct {
	version string
	mu      sync.Mutex
	calls   []string
}

func (f *fakeForgejo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	f.mu.Unlock()
	if r.URL.Path == "/api/v1/version" {
		_ = json.NewEncoder(w).Encode(map[string]string{"version": f.version})
		return
	}
	if r.Header.Get("Authorization") != "token good" {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"message":"invalid token"}`))
		return
	}
	tokens := map[string]string{
		"/api/v1/admin/runners/registration-token":                  "fj-instance",
		"/api/v1/orgs/acme/actions/runners/registration-token":      "fj-org",
		"/api/v1/repos/acme/app/actions/runners/registration-token": "fj-repo",
	}
	tok, ok := tokens[r.URL.Path]
	switch {
	case !ok:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"message":"not found"}`))
	case r.Method != http.MethodGet:
		w.WriteHeader(http.StatusMethodNotAllowed)
	default:
		_ = json.NewEncoder(w).Encode(map[string]string{"token": tok})
	}
}

func (f *fakeForgejo) requests() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, "; ")
}

func TestRegistrationTokenForgejoDialect(t *testing.T) {
	ctx := testctx.New(t, 2*time.Minute)
	for _, version := range []string{"11.0.1+gitea-1.22.0", "1.22.0"} { // Forgejo; a server taken for Gitea
		fake := &fakeForgejo{version: version}
		srv := httptest.NewServer(fake)
		t.Cleanup(srv.Close)
		c, err := forgeapi.New(ctx, srv.URL, "good")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := c.IsForgejo(), strings.Contains(version, "+gitea-"); got != want {
			t.Errorf("%s: IsForgejo %v", version, got)
		}
		for scope, want := range map[string]string{"": "fj-instance", "acme": "fj-org", "acme/app": "fj-repo"} {
			tok, err := c.RegistrationToken(ctx, scope)
			if err != nil || tok != want {
				t.Errorf("%s: scope %q: %q, %v; want %q", version, scope, tok, err, want)
			}
		}
		reqs := fake.requests()
		if c.IsForgejo() && strings.Contains(reqs, "POST") {
			t.Errorf("Forgejo was asked with POST: %s", reqs)
		}
		if !c.IsForgejo() && !strings.Contains(reqs, "POST /api/v1/admin/actions/runners/registration-token; GET /api/v1/admin/runners/registration-token") {
			t.Errorf("no fallback from Gitea's POST to Forgejo's GET: %s", reqs)
		}
		if _, err := c.RegistrationToken(ctx, "acme/nope"); !errors.Is(err, forgeapi.ErrNotFound) {
			t.Errorf("%s: unknown repository: %v", version, err)
		}
		bad, err := forgeapi.New(ctx, srv.URL, "bad")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bad.RegistrationToken(ctx, ""); !errors.Is(err, forgeapi.ErrUnauthorized) {
			t.Errorf("%s: bad token: %v", version, err)
		}
	}
}
