package server

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

func TestRequireReaders(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "readers")
	content := "# comment\n\n" + ReaderLine("a", "secret-a") + "\n" + ReaderLine("b", "secret-b") + "\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := LoadReaders(file)
	if err != nil {
		t.Fatal(err)
	}
	h := RequireReaders(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }), r, "test")
	for _, c := range []struct {
		name, user, pass string
		auth             bool
		want             int
	}{
		{"none", "", "", false, http.StatusUnauthorized},
		{"a", "a", "secret-a", true, http.StatusTeapot},
		{"b", "b", "secret-b", true, http.StatusTeapot},
		{"a with b's password", "a", "secret-b", true, http.StatusUnauthorized},
		{"unknown user", "c", "secret-a", true, http.StatusUnauthorized},
		{"empty password", "a", "", true, http.StatusUnauthorized},
	} {
		req := httptest.NewRequest(http.MethodGet, "/nix-cache-info", nil)
		if c.auth {
			req.SetBasicAuth(c.user, c.pass)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Errorf("%s: %d, want %d", c.name, rec.Code, c.want)
		}
		if rec.Code == http.StatusUnauthorized && rec.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without a challenge", c.name)
		}
	}

	for name, bad := range map[string]string{
		"empty":      "# nobody\n",
		"no digest":  "a\n",
		"short hash": "a:sha256:abcd\n",
		"not hex":    "a:sha256:" + string(make([]byte, 64)) + "\n",
		"no user":    ReaderLine("", "x") + "\n",
	} {
		p := filepath.Join(dir, "bad")
		os.WriteFile(p, []byte(bad), 0o600)
		if _, err := LoadReaders(p); err == nil {
			t.Errorf("%s readers file accepted", name)
		}
	}
}
