package local

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/cache-push/store"
)

// TestSymlinksAreNotServed: the cache server served whatever a symbolic
// link in the cache directory pointed at (issue 11, finding 8). A link as
// the object itself, or as a directory on the way to it, is not an object.
func TestSymlinksAreNotServed(t *testing.T) {
	s := newTestStore(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("cache signing key"), 0o600); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "nar")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	const narKey = "nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst"
	if err := os.WriteFile(filepath.Join(outside, filepath.Base(narKey)), []byte("not ours"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A regular object next to them is served.
	if err := store.Put(context.Background(), s, narKey, strings.NewReader("nar")); err != nil {
		t.Fatal(err)
	}
	link := func(s *Store, target, key string) {
		if err := os.Symlink(target, filepath.Join(s.Dir(), filepath.FromSlash(key))); err != nil {
			t.Fatal(err)
		}
	}
	link(s, secret, "00000000000000000000000000000000.narinfo")
	link(s, "nix-cache-info", "11111111111111111111111111111111.narinfo") // inside the directory
	// Another cache whose nar directory is a link out of it.
	s2 := newTestStore(t)
	link(s2, outside, "nar")

	for _, tc := range []struct {
		s   *Store
		key string
	}{{s, "00000000000000000000000000000000.narinfo"}, {s, "11111111111111111111111111111111.narinfo"}, {s2, narKey}} {
		s, key := tc.s, tc.key
		srv := httptest.NewServer(server.Handler(s, server.Options{}))
		defer srv.Close()
		if _, err := s.Stat(context.Background(), key); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Stat(%s) = %v, want ErrNotFound", key, err)
		}
		if _, err := s.Open(context.Background(), key); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Open(%s) = %v, want ErrNotFound", key, err)
		}
		resp, err := http.Get(srv.URL + "/" + key)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("GET /%s served a symbolic link: %q", key, body)
		}
	}
	srv := httptest.NewServer(server.Handler(s, server.Options{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/" + narKey)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /%s: %s", narKey, resp.Status)
	}
}
