package action

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestOIDCToken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer req-token" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		if r.URL.Query().Get("audience") != "sigstore" || r.URL.Query().Get("run") != "7" {
			http.Error(w, "bad query "+r.URL.RawQuery, http.StatusBadRequest)
			return
		}
		w.Write([]byte(`{"value":"the.id.token"}`))
	}))
	defer srv.Close()
	env := func(url, tok string) func(string) string {
		return func(k string) string {
			return map[string]string{"ACTIONS_ID_TOKEN_REQUEST_URL": url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": tok}[k]
		}
	}
	ctx := context.Background()
	got, err := OIDCToken(ctx, env(srv.URL+"/token?run=7", "req-token"), "sigstore")
	if err != nil || got != "the.id.token" {
		t.Fatalf("token %q, %v", got, err)
	}
	if _, err := OIDCToken(ctx, env("", ""), "sigstore"); !errors.Is(err, ErrNoOIDC) {
		t.Fatalf("without the env: %v", err)
	}
	if _, err := OIDCToken(ctx, env(srv.URL+"/token?run=7", "wrong"), "sigstore"); err == nil {
		t.Fatal("a refused request gave a token")
	}
}
