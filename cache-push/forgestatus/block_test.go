package forgestatus_test

import (
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/forgestatus"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/internal/retry"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

// TestNeverBlocks: with a configured forge that never answers, the
// pusher's calls return at once (verdicts beyond the queue are dropped),
// at most Workers requests are open at the forge, and Close ends when its
// ctx does, saying statuses were left unsent.
func TestNeverBlocks(t *testing.T) {
	var mu sync.Mutex
	open, most := 0, 0
	stuck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		open++
		most = max(most, open)
		mu.Unlock()
		<-r.Context().Done()
		mu.Lock()
		open--
		mu.Unlock()
	}))
	defer stuck.Close()
	defer stuck.CloseClientConnections()
	const workers = 2
	n := openAt(t, stuck.URL, forgestatus.Options{Workers: workers, QueueSize: 4})

	signer, _ := testkey.Signer(t)
	var verdicts []cachepush.Verdict
	for i := range 8 {
		verdicts = append(verdicts, dispute(t, signer, "p"+string(rune('a'+i)), stuck.URL, i))
	}
	start := time.Now()
	for i := range 200 {
		n.Verdict(verdicts[i%len(verdicts)])
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("200 verdicts took %s with the forge stuck", d)
	}
	time.Sleep(500 * time.Millisecond) // let the workers reach the forge
	ctx := testctx.New(t, 500*time.Millisecond)
	start = time.Now()
	if err := n.Close(ctx); err == nil {
		t.Error("Close with statuses unsent said nothing")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %s past its ctx", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if most == 0 || most > workers {
		t.Errorf("%d requests open at once at the forge, want 1..%d", most, workers)
	}
}

// openAt opens a Notifier with o's Workers, QueueSize and Retry, whose
// forges file lists the forge at url for any builder and repository.
func openAt(t *testing.T, url string, o forgestatus.Options) *forgestatus.Notifier {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tok"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs, err := forgestatus.Parse([]byte("forges:\n  - {url: "+url+", token_file: tok, builders: ['*'], repos: ['*/*']}\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	_, conn := testqueue.Embedded(t, natsserver.Config{})
	st, err := local.New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	o.Forges, o.Store, o.KV = fs, st, conn
	n, err := forgestatus.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// dispute is a dispute on the path named name, with one bundle signed by
// signer whose forge job is commit i of o/r on the forge at server.
func dispute(t *testing.T, signer *attest.Signer, name, server string, i int) cachepush.Verdict {
	t.Helper()
	out := attest.Output{Name: "out", Path: storePath(name), NarHash: sha256.Sum256([]byte(name)), NarSize: 1}
	s, err := attest.NewStatement(&attest.Build{DrvPath: storePath(name + ".drv"), System: system, BuilderID: "b",
		Outputs: []attest.Output{out}, Workflow: &attest.Workflow{Server: server, Repository: "o/r", Sha: string(make40(i))}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := attest.Sign(t.Context(), s, signer)
	if err != nil {
		t.Fatal(err)
	}
	return cachepush.Verdict{Kind: queue.EventDisputed, Tenant: tenant, StorePath: out.Path, Bundles: []json.RawMessage{b}}
}

// make40 is a 40-digit hex commit id.
func make40(i int) []byte {
	b := make([]byte, 40)
	for j := range b {
		b[j] = "0123456789abcdef"[(i+j)%16]
	}
	return b
}

// TestNoRedirect: a configured forge that redirects (to another port of
// the same host, where Go's HTTP client would send the Authorization
// header along) never gets its token forwarded: redirects are not
// followed at all.
func TestNoRedirect(t *testing.T) {
	var hits atomic.Int32
	stranger := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		t.Errorf("redirect followed: %s %s (Authorization %q)", r.Method, r.URL, r.Header.Get("Authorization"))
	}))
	defer stranger.Close()
	forge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, stranger.URL+r.URL.Path, http.StatusFound)
	}))
	defer forge.Close()
	n := openAt(t, forge.URL, forgestatus.Options{Retry: retry.Policy{Initial: 10 * time.Millisecond, Attempts: 2}})
	signer, _ := testkey.Signer(t)
	n.Verdict(dispute(t, signer, "redirected", forge.URL, 0))
	if err := n.Close(testctx.New(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	if hits.Load() != 0 {
		t.Errorf("the redirect target was contacted %d times", hits.Load())
	}
}
