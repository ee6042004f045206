package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// servedCounts is a ServedObserver that sums per reader.
type servedCounts struct {
	mu       sync.Mutex
	bytes    map[string]int64
	requests map[string]int
}

func (c *servedCounts) ObserveServed(reader string, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bytes[reader] += n
	c.requests[reader]++
}

// TestServedBytes: the server tells its observer the body bytes of each
// request and whose they were: the authenticated reader, or nobody
// without readers; refused requests never reach it.
func TestServedBytes(t *testing.T) {
	s := newTestStore(t)
	file := filepath.Join(t.TempDir(), "readers")
	if err := os.WriteFile(file, []byte(ReaderLine("alice", "pw-a")+"\n"+ReaderLine("bob", "pw-b")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	readers, err := LoadReaders(file)
	if err != nil {
		t.Fatal(err)
	}
	c := &servedCounts{bytes: map[string]int64{}, requests: map[string]int{}}
	open := Handler(s, Options{Served: c})
	private := httptest.NewServer(RequireReaders(open, readers, "t"))
	defer private.Close()
	public := httptest.NewServer(open)
	defer public.Close()

	get := func(base, user, pass, path string) int64 {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	want := map[string]int64{}
	want["alice"] += get(private.URL, "alice", "pw-a", "/"+narKey)
	want["alice"] += get(private.URL, "alice", "pw-a", "/"+hash32+".narinfo")
	want["bob"] += get(private.URL, "bob", "pw-b", "/"+narRawKey)
	want[""] += get(public.URL, "", "", "/"+narKey)
	// Refused before the cache: not served, not counted.
	get(private.URL, "bob", "wrong", "/"+narKey)
	get(private.URL, "", "", "/"+narKey)

	if want["alice"] != int64(len(objects[narKey])+len(objects[hash32+".narinfo"])) {
		t.Fatalf("alice received %d bytes", want["alice"])
	}
	// A handler counts once it has written the body, which can be after
	// the client read it: Close waits for the handlers.
	private.Close()
	public.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	for reader, n := range want {
		if c.bytes[reader] != n {
			t.Errorf("reader %q: counted %d bytes, received %d", reader, c.bytes[reader], n)
		}
	}
	if c.requests["alice"] != 2 || c.requests["bob"] != 1 || c.requests[""] != 1 || len(c.requests) != 3 {
		t.Errorf("requests %v, want alice 2, bob 1, anonymous 1", c.requests)
	}
}

// TestServedRegistryBytes: what the registry under /v2/ serves is counted
// for its reader too, also a response it cuts short.
func TestServedRegistryBytes(t *testing.T) {
	s := newTestStore(t)
	file := filepath.Join(t.TempDir(), "readers")
	if err := os.WriteFile(file, []byte(ReaderLine("alice", "pw-a")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	readers, err := LoadReaders(file)
	if err != nil {
		t.Fatal(err)
	}
	reg := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, strings.Repeat("x", 40))
		if r.URL.Path == "/v2/cut" {
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, strings.Repeat("y", 60))
	})
	c := &servedCounts{bytes: map[string]int64{}, requests: map[string]int{}}
	srv := httptest.NewServer(RequireReaders(Handler(s, Options{Served: c, Registry: reg}), readers, "t"))
	defer srv.Close()
	for _, p := range []string{"/v2/", "/v2/cut"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+p, nil)
		req.SetBasicAuth("alice", "pw-a")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	srv.Close() // the handlers count after writing: wait for them
	c.mu.Lock()
	defer c.mu.Unlock()
	// The client may send the cut request again (nothing reached it).
	cut := c.requests["alice"] - 1
	if cut < 1 || c.bytes["alice"] != 100+40*int64(cut) {
		t.Fatalf("counted %d bytes in %d requests, want 100 and 40 per cut one", c.bytes["alice"], c.requests["alice"])
	}
}
