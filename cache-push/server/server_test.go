package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/local"
)

const (
	hash32    = "0123456789abcdfghijklmnpqrsvwxyz"
	narKey    = "nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst"
	narXZKey  = "nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.xz"
	narRawKey = "nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar"
	secret    = "TOP SECRET outside the store"
)

var objects = map[string]string{
	hash32 + ".narinfo":         "StorePath: /nix/store/" + hash32 + "-hello\nURL: " + narKey + "\n",
	hash32 + ".provenance.json": `{"_type":"https://in-toto.io/Statement/v1"}`,
	hash32 + ".vsa.json":        `{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`,
	"provenix/policy.json":      `{"version":1,"policy":"builders: []"}`,
	"provenix/verifier.json":    `{"version":1,"verifierId":"https://cache.example/"}`,
	"provenix/vsa.pub":          "-----BEGIN PUBLIC KEY-----\n",
	"provenix/other.json":       "not published",
	narKey:                      strings.Repeat("zstd bytes ", 10000),
	narXZKey:                    "xz bytes",
	narRawKey:                   "raw nar bytes",
	"other/file":                "not part of the layout",
}

// newTestStore fills a store in dir/cache and puts a secret next to it, so
// traversal tests can check that it never leaks.
func newTestStore(t *testing.T) *local.Store {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := local.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range objects {
		if err := store.Put(t.Context(), s, k, strings.NewReader(v)); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func do(t *testing.T, h http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	// NewRequest parses target the way a server parses a request line, so
	// dot segments and escapes reach the handler as a client sent them.
	req := httptest.NewRequest(method, target, nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestRoutes(t *testing.T) {
	h := Handler(newTestStore(t), Options{})
	tests := []struct {
		path, contentType, cacheControl, body string
	}{
		{"/" + hash32 + ".narinfo", "text/x-nix-narinfo", narinfoCacheControl, objects[hash32+".narinfo"]},
		{"/" + hash32 + ".provenance.json", "application/json", narinfoCacheControl, objects[hash32+".provenance.json"]},
		{"/" + hash32 + ".vsa.json", "application/json", narinfoCacheControl, objects[hash32+".vsa.json"]},
		{"/provenix/policy.json", "application/json", narinfoCacheControl, objects["provenix/policy.json"]},
		{"/provenix/verifier.json", "application/json", narinfoCacheControl, objects["provenix/verifier.json"]},
		{"/provenix/vsa.pub", "application/x-pem-file", narinfoCacheControl, objects["provenix/vsa.pub"]},
		{"/" + narKey, "application/x-nix-nar", narCacheControl, objects[narKey]},
		{"/" + narXZKey, "application/x-nix-nar", narCacheControl, objects[narXZKey]},
		{"/" + narRawKey, "application/x-nix-nar", narCacheControl, objects[narRawKey]},
		{"/" + narKey + "?query=ignored", "application/x-nix-nar", narCacheControl, objects[narKey]},
		{"/nix-cache-info", "text/x-nix-cache-info", cacheInfoCacheControl, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				rec := do(t, h, method, tt.path)
				res := rec.Result()
				if res.StatusCode != http.StatusOK {
					t.Fatalf("%s: status %d, want 200", method, res.StatusCode)
				}
				if got := res.Header.Get("Content-Type"); got != tt.contentType {
					t.Errorf("%s: Content-Type %q, want %q", method, got, tt.contentType)
				}
				if got := res.Header.Get("Cache-Control"); got != tt.cacheControl {
					t.Errorf("%s: Cache-Control %q, want %q", method, got, tt.cacheControl)
				}
				if got, want := res.Header.Get("Content-Length"), fmt.Sprint(len(tt.body)); got != want {
					t.Errorf("%s: Content-Length %q, want %q", method, got, want)
				}
				wantBody := tt.body
				if method == http.MethodHead {
					wantBody = ""
				}
				if got := rec.Body.String(); got != wantBody {
					t.Errorf("%s: body %.40q…, want %.40q…", method, got, wantBody)
				}
			}
		})
	}
}

func TestCacheInfo(t *testing.T) {
	s := newTestStore(t)
	if got := do(t, Handler(s, Options{Priority: 10}), http.MethodGet, "/nix-cache-info").Body.String(); !strings.Contains(got, "\nPriority: 10\n") {
		t.Errorf("generated nix-cache-info %q does not carry Priority 10", got)
	}
	stored := "StoreDir: /nix/store\nPriority: 7\n"
	if err := store.Put(t.Context(), s, "nix-cache-info", strings.NewReader(stored)); err != nil {
		t.Fatal(err)
	}
	rec := do(t, Handler(s, Options{Priority: 10}), http.MethodGet, "/nix-cache-info")
	if got := rec.Body.String(); got != stored {
		t.Errorf("nix-cache-info %q, want the stored %q", got, stored)
	}
	if got := rec.Header().Get("Content-Type"); got != "text/x-nix-cache-info" {
		t.Errorf("Content-Type %q", got)
	}
}

func TestErrors(t *testing.T) {
	h := Handler(newTestStore(t), Options{})
	tests := []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/", http.StatusNotFound},
		{http.MethodGet, "/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.narinfo", http.StatusNotFound}, // valid shape, absent
		{http.MethodHead, "/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.narinfo", http.StatusNotFound},
		{http.MethodGet, "/nar/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.nar.zst", http.StatusNotFound},
		{http.MethodGet, "/other/file", http.StatusNotFound}, // in the store, not in the layout
		{http.MethodGet, "/provenix/other.json", http.StatusNotFound},
		{http.MethodGet, "/" + hash32[:31] + ".narinfo", http.StatusNotFound},              // short hash
		{http.MethodGet, "/" + strings.ToUpper(hash32) + ".narinfo", http.StatusNotFound},  // not nix32
		{http.MethodGet, "/0123456789abcdfghijklmnpqrsvwxye.narinfo", http.StatusNotFound}, // 'e' is not nix32
		{http.MethodGet, "/nar/" + hash32 + ".nar.gz", http.StatusNotFound},
		{http.MethodGet, "/nar/" + hash32 + ".nar.zst/", http.StatusNotFound},
		{http.MethodGet, "/" + hash32 + ".narinfo/", http.StatusNotFound},
		{http.MethodGet, "/.tmp", http.StatusNotFound},
		{http.MethodGet, "/nix-cache-info.bak", http.StatusNotFound},
		{http.MethodPut, "/" + hash32 + ".narinfo", http.StatusMethodNotAllowed},
		{http.MethodPost, "/nix-cache-info", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/" + narKey, http.StatusMethodNotAllowed},
		{http.MethodOptions, "/", http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		rec := do(t, h, tt.method, tt.path)
		if rec.Code != tt.status {
			t.Errorf("%s %s: status %d, want %d", tt.method, tt.path, rec.Code, tt.status)
		}
		if tt.status == http.StatusMethodNotAllowed && rec.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %s: Allow %q, want %q", tt.method, tt.path, rec.Header().Get("Allow"), "GET, HEAD")
		}
		if got := rec.Header().Get("Cache-Control"); got != notFoundCacheControl {
			t.Errorf("%s %s: Cache-Control %q on an error, want %q", tt.method, tt.path, got, notFoundCacheControl)
		}
	}
}

var hostilePaths = []string{
	"/../secret",
	"/nar/../../secret",
	"/%2e%2e/secret",
	"/nar/%2e%2e/%2e%2e/secret",
	"/nar/..%2f..%2fsecret",
	"/nar%2f..%2f..%2fsecret",
	"/./nix-cache-info",
	"//nix-cache-info",
	"/nar//" + hash32 + ".nar",
	"/nar/..\\..\\secret",
	"/nar/%00" + hash32 + ".nar",
	"/" + strings.Repeat("a", 300) + ".narinfo",
	"/" + strings.Repeat("../", 50) + "etc/passwd",
}

func TestHostilePaths(t *testing.T) {
	h := Handler(newTestStore(t), Options{})
	for _, p := range hostilePaths {
		rec := do(t, h, http.MethodGet, p)
		if rec.Code != http.StatusBadRequest && rec.Code != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 400 or 404", p, rec.Code)
		}
		if strings.Contains(rec.Body.String(), "SECRET") {
			t.Errorf("GET %s leaked a file outside the store", p)
		}
	}
	for _, p := range []string{"/../secret", "/%2e%2e/secret", "//nix-cache-info", "/" + strings.Repeat("a", 300)} {
		if rec := do(t, h, http.MethodGet, p); rec.Code != http.StatusBadRequest {
			t.Errorf("GET %s: status %d, want 400", p, rec.Code)
		}
	}
}

// TestHostilePathsOnTheWire sends raw request lines, so no client library
// cleans the paths before they reach the server.
func TestHostilePathsOnTheWire(t *testing.T) {
	srv := httptest.NewServer(Handler(newTestStore(t), Options{}))
	defer srv.Close()
	for _, p := range hostilePaths {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", p)
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			conn.Close()
			t.Fatalf("GET %s: %v", p, err)
		}
		body, _ := io.ReadAll(res.Body)
		conn.Close()
		if res.StatusCode != http.StatusBadRequest && res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 400 or 404", p, res.StatusCode)
		}
		if bytes.Contains(body, []byte("SECRET")) {
			t.Errorf("GET %s leaked a file outside the store", p)
		}
	}
}

// TestRealClient fetches through a real HTTP server and client, as nix does.
func TestRealClient(t *testing.T) {
	srv := httptest.NewServer(Handler(newTestStore(t), Options{}))
	defer srv.Close()
	res, err := srv.Client().Get(srv.URL + "/" + narKey)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || string(body) != objects[narKey] || res.ContentLength != int64(len(body)) {
		t.Errorf("GET nar: status %d, %d bytes, Content-Length %d", res.StatusCode, len(body), res.ContentLength)
	}
	if res.Header.Get("Last-Modified") == "" {
		t.Error("no Last-Modified header")
	}
}

// failingStore fails every read with an I/O error, like a broken disk.
type failingStore struct{ store.Store }

var errDisk = errors.New("disk on fire")

func (failingStore) Stat(context.Context, string) (store.Info, error) { return store.Info{}, errDisk }

func TestLogging(t *testing.T) {
	tests := []struct {
		name    string
		s       store.Store
		level   slog.Level
		path    string
		status  int
		wantLog []string
		noLog   []string
	}{
		{"requests at debug", newTestStore(t), slog.LevelDebug, "/" + hash32 + ".narinfo", 200, []string{"level=DEBUG", "status=200"}, nil},
		{"quiet at info", newTestStore(t), slog.LevelInfo, "/" + hash32 + ".narinfo", 200, nil, []string{"request"}},
		{"quiet 404 at info", newTestStore(t), slog.LevelInfo, "/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.narinfo", 404, nil, []string{"request"}},
		{"store failure", failingStore{newTestStore(t)}, slog.LevelInfo, "/" + hash32 + ".narinfo", 500, []string{"level=ERROR", "disk on fire"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tt.level}))
			rec := do(t, Handler(tt.s, Options{Logger: log}), http.MethodGet, tt.path)
			if rec.Code != tt.status {
				t.Errorf("status %d, want %d", rec.Code, tt.status)
			}
			if strings.Contains(rec.Body.String(), "disk on fire") {
				t.Error("internal error text sent to the client")
			}
			for _, s := range tt.wantLog {
				if !strings.Contains(buf.String(), s) {
					t.Errorf("log %q lacks %q", buf.String(), s)
				}
			}
			for _, s := range tt.noLog {
				if strings.Contains(buf.String(), s) {
					t.Errorf("log %q contains %q", buf.String(), s)
				}
			}
		})
	}
}
