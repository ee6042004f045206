package forgestatus_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
	"github.com/nix-community/go-nix/pkg/nar"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/forgestatus"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testcache"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testgitea"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

const (
	tenant   = "t1"
	system   = "x86_64-linux"
	cacheURL = "https://cache.example.org"
	context_ = "provenix/" + system
)

// stack is a pusher (quorum 2 of builders a, b, c) reporting to a real
// Gitea through a Notifier, on a real NATS server and a local store.
type stack struct {
	t       *testing.T
	forge   *testgitea.Forge
	conn    *queue.Conn
	store   *local.Store
	policy  *policy.Policy
	forges  *forgestatus.Forges
	signers map[string]*attest.Signer
	pusher  *cachepush.Pusher
	dir     string
	logs    *testlog.Buffer
	log     *slog.Logger
}

func newStack(t *testing.T, forge *testgitea.Forge, extraForges string) *stack {
	t.Helper()
	_, conn := testqueue.Embedded(t, natsserver.Config{})
	dir := t.TempDir()
	s := &stack{t: t, forge: forge, conn: conn, signers: map[string]*attest.Signer{}, dir: dir, logs: &testlog.Buffer{}}
	s.log = slog.New(slog.NewTextHandler(s.logs, nil))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pusher log:\n%s", s.logs)
		}
	})
	for _, id := range []string{"a", "b", "c"} {
		sg, err := attest.GenerateKeyFiles(filepath.Join(dir, id))
		if err != nil {
			t.Fatal(err)
		}
		s.signers[id] = sg
	}
	var err error
	s.policy, err = policy.Parse([]byte(`tenants: [`+tenant+`]
systems: [`+system+`]
quorum: {min: 2}
closure: {timeout: 1ms}
builders:
  - {id: a, key: a.pub}
  - {id: b, key: b.pub}
  - {id: c, key: c.pub}
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.store, err = local.New(filepath.Join(dir, "cache")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gitea.token"), []byte(forge.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Builder c may build, but not speak for this forge.
	s.forges, err = forgestatus.Parse([]byte(`cache_url: `+cacheURL+`/
forges:
  - url: `+forge.URL+`/
    token_file: gitea.token
    builders: [a, b]
    repos: ["`+forge.AdminUser+`/*"]
`+extraForges), dir)
	if err != nil {
		t.Fatal(err)
	}
	s.start()
	return s
}

// start starts a pusher with a fresh Notifier on the stack's NATS and
// store (a restart, after stop).
func (s *stack) start() {
	t := s.t
	n, err := forgestatus.Open(forgestatus.Options{Forges: s.forges, Store: s.store, KV: s.conn, Logger: s.log})
	if err != nil {
		t.Fatal(err)
	}
	key, err := cachepush.LoadKey(s.cacheKey())
	if err != nil {
		t.Fatal(err)
	}
	s.pusher, err = cachepush.New(cachepush.Config{KV: s.conn, Store: s.store, Policy: s.policy, CacheKey: key, Staging: s.conn,
		Verdicts: n, Logger: s.log, UncheckedOutputPathsUnsafe: true}) // made-up derivations
	if err != nil {
		t.Fatal(err)
	}
}

func (s *stack) cacheKey() string {
	f := filepath.Join(s.dir, "cachekey")
	if _, err := os.Stat(f); err != nil {
		if _, err := cachepush.GenerateKeyFiles("test-cache-1", f); err != nil {
			s.t.Fatal(err)
		}
	}
	return f
}

// stop closes the pusher, which sends every queued status first.
func (s *stack) stop() {
	if err := s.pusher.Close(testctx.New(s.t, 2*time.Minute)); err != nil {
		s.t.Fatal(err)
	}
}

// storePath is a store path for name, the same for the whole test run.
func storePath(name string) string {
	pathsMu.Lock()
	defer pathsMu.Unlock()
	if paths[name] == "" {
		paths[name] = testcache.StorePath(name)
	}
	return paths[name]
}

var (
	pathsMu sync.Mutex
	paths   = map[string]string{}
)

// makeNAR is the NAR of a single file holding content.
func makeNAR(t *testing.T, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err == nil {
		err = w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))})
	}
	if err == nil {
		_, err = w.Write([]byte(content))
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// vote has builder sign, stage and push a result for name with content
// and references refs, built in the forge job w (nil: no forge job), and
// returns its bundle.
func (s *stack) vote(builder, name, content string, w *attest.Workflow, refs ...string) []byte {
	t := s.t
	ctx := testctx.New(t, time.Minute)
	narBytes := makeNAR(t, content)
	out := attest.Output{Name: "out", Path: storePath(name), NarHash: sha256.Sum256(narBytes), NarSize: uint64(len(narBytes)), References: refs}
	drv := storePath(name + ".drv")
	st, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: system, BuilderID: builder,
		Installable: attest.Installable{Kind: "drv", Ref: drv}, Workflow: w, Outputs: []attest.Output{out}})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attest.Sign(ctx, st, s.signers[builder])
	if err != nil {
		t.Fatal(err)
	}
	key := queue.ScopedKey(queue.StagingKey(out.NarHashHex())+"-"+name, builder)
	if _, err := s.conn.Stage(ctx, key, bytes.NewReader(narBytes)); err != nil {
		t.Fatal(err)
	}
	r := &queue.Result{Version: queue.ResultVersion, Tenant: tenant, Builder: builder, DrvPath: drv, System: system,
		Outputs: []queue.Output{{Name: "out", Path: out.Path, NarHash: out.NarHashHex(), NarSize: out.NarSize, StagingKey: key, References: refs}},
		Bundle:  bundle}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	// A minority answer is refused (a conflict): that is the verdict's
	// business, not this test's.
	s.pusher.Process(ctx, "results."+tenant+"."+system, data, r.MsgID())
	return bundle
}

// job is a forge job of the test's Gitea.
func (s *stack) job(owner, repo, sha string) *attest.Workflow {
	return &attest.Workflow{Server: s.forge.URL, Repository: owner + "/" + repo, Sha: sha, Workflow: "build.yml", Job: "build"}
}

// statuses are every provenix status set on sha, newest first.
func statuses(t *testing.T, f *testgitea.Forge, owner, repo, sha string) []*gitea.Status {
	t.Helper()
	all, _, err := f.Client().ListStatuses(owner, repo, sha, gitea.ListStatusesOption{})
	if err != nil {
		t.Fatal(err)
	}
	var out []*gitea.Status
	for _, st := range all {
		if st.Context == context_ {
			out = append(out, st)
		}
	}
	return out
}

// checkStatus checks st says desc and links to the sidecar of the path
// named name (no link when name is "").
func checkStatus(t *testing.T, st *gitea.Status, desc, name string) {
	t.Helper()
	want := ""
	if name != "" {
		want = cacheURL + "/" + cachelayout.ProvenanceKey(storePath(name))
	}
	if st.Description != desc || st.TargetURL != want {
		t.Errorf("status %q → %q, want %q → %q", st.Description, st.TargetURL, desc, want)
	}
}

// current is sha's latest provenix status, or nil.
func current(t *testing.T, f *testgitea.Forge, owner, repo, sha string) *gitea.Status {
	t.Helper()
	comb, _, err := f.Client().GetCombinedStatus(owner, repo, sha)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range comb.Statuses {
		if st.Context == context_ {
			return st
		}
	}
	return nil
}

// waitStatus waits for sha's provenix status to be in state.
func waitStatus(t *testing.T, f *testgitea.Forge, owner, repo, sha string, state gitea.StatusState) *gitea.Status {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		comb, _, err := f.Client().GetCombinedStatus(owner, repo, sha)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range comb.Statuses {
			if st.Context == context_ && st.State == state {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s status %s on %s/%s@%s; have %+v", state, context_, owner, repo, sha, comb.Statuses)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestForgeSeesTheVerdict runs every case against one real Gitea, as
// starting one takes most of the time.
func TestForgeSeesTheVerdict(t *testing.T) {
	f := testgitea.Start(t)
	owner, repo := f.CreateRepo(t, "pkgs")
	var strangerHit atomic.Int32
	// A second listener stands for a forge no one configured; a
	// malicious builder's signed provenance names it.
	stranger := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		strangerHit.Add(1)
		t.Errorf("unconfigured forge contacted: %s %s (Authorization %q)", r.Method, r.URL, r.Header.Get("Authorization"))
		http.Error(w, "no", http.StatusTeapot)
	}))
	defer stranger.Close()
	s := newStack(t, f, "")
	// commit pushes a commit adding file and returns it and a job of it.
	commit := func(file string) (string, *attest.Workflow) {
		f.PutFile(t, owner, repo, file, []byte("{ }"))
		sha := f.HeadSHA(t, owner, repo)
		return sha, s.job(owner, repo, sha)
	}

	t.Run("published", func(t *testing.T) {
		sha := f.HeadSHA(t, owner, repo)
		job := s.job(owner, repo, sha)
		s.vote("a", "hello", "hello", job)
		if got := statuses(t, f, owner, repo, sha); len(got) != 0 {
			t.Fatalf("a status before the quorum: %+v", got[0])
		}
		s.vote("b", "hello", "hello", job)
		checkStatus(t, waitStatus(t, f, owner, repo, sha, gitea.StatusSuccess), "2 of 2 independent builders agree", "hello")
	})

	t.Run("disputed", func(t *testing.T) {
		sha, job := commit("flaky.nix")
		s.vote("a", "flaky", "one", job)
		s.vote("b", "flaky", "two", job)
		checkStatus(t, waitStatus(t, f, owner, repo, sha, gitea.StatusFailure), "disputed: 2 builders gave 2 different answers", "")
	})

	t.Run("incomplete", func(t *testing.T) {
		sha, job := commit("top.nix")
		// Agreed, but what it refers to never comes: it waits, past the
		// policy's closure timeout (1ms).
		s.vote("a", "top", "top", job, storePath("never-built"))
		s.vote("b", "top", "top", job, storePath("never-built"))
		if _, err := s.pusher.Sweep(testctx.New(t, time.Minute)); err != nil {
			t.Fatal(err)
		}
		checkStatus(t, waitStatus(t, f, owner, repo, sha, gitea.StatusError), "incomplete: 1 reference missing after 1ms", "top")
	})

	t.Run("restart is idempotent and a stale dispute does not flip a publication", func(t *testing.T) {
		sha, job := commit("again.nix")
		a := s.vote("a", "again", "again", job)
		s.vote("b", "again", "again", job)
		waitStatus(t, f, owner, repo, sha, gitea.StatusSuccess)
		s.stop()
		s.start()
		// A redelivery after the restart publishes the path again
		// (existing), and a dispute another pusher decided before the
		// quorum arrives late.
		s.vote("a", "again", "again", job)
		s.vote("b", "again", "again", job)
		n, err := forgestatus.Open(forgestatus.Options{Forges: s.forges, Store: s.store, KV: s.conn, Logger: s.log})
		if err != nil {
			t.Fatal(err)
		}
		n.Verdict(cachepush.Verdict{Kind: queue.EventDisputed, Tenant: tenant, StorePath: storePath("again"),
			Bundles: []json.RawMessage{a}, Why: "late"})
		if err := n.Close(testctx.New(t, time.Minute)); err != nil {
			t.Fatal(err)
		}
		s.stop()
		s.start()
		got := statuses(t, f, owner, repo, sha)
		if len(got) != 1 || got[0].State != gitea.StatusSuccess {
			var states []string
			for _, st := range got {
				states = append(states, string(st.State)+": "+st.Description)
			}
			t.Errorf("statuses after restarts %q, want the one success", states)
		}
	})

	t.Run("two pushers racing end on the record's verdict", func(t *testing.T) {
		// A proxy in front of Gitea holds the first status sent until the
		// test lets it go: the slow pusher's.
		target, err := url.Parse(f.URL)
		if err != nil {
			t.Fatal(err)
		}
		rp := httputil.NewSingleHostReverseProxy(target)
		var held atomic.Bool
		holding, release := make(chan struct{}), make(chan struct{})
		proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/statuses/") && held.CompareAndSwap(false, true) {
				close(holding)
				<-release
			}
			rp.ServeHTTP(w, r)
		}))
		defer proxy.Close()
		fs, err := forgestatus.Parse([]byte("forges:\n  - {url: "+proxy.URL+", token_file: gitea.token, builders: [a, b], repos: ['*/*']}\n"), s.dir)
		if err != nil {
			t.Fatal(err)
		}
		f.PutFile(t, owner, repo, "race.nix", []byte("{ }"))
		sha := f.HeadSHA(t, owner, repo)
		job := &attest.Workflow{Server: proxy.URL, Repository: owner + "/" + repo, Sha: sha}
		a := s.vote("a", "race", "race", job)
		s.vote("b", "race", "race", job)
		open := func() *forgestatus.Notifier {
			n, err := forgestatus.Open(forgestatus.Options{Forges: fs, Store: s.store, KV: s.conn, Logger: s.log})
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		// The slow pusher decided a dispute before the quorum; its
		// status is held. The other one publishes meanwhile.
		slow, fast := open(), open()
		slow.Verdict(cachepush.Verdict{Kind: queue.EventDisputed, Tenant: tenant, StorePath: storePath("race"),
			Bundles: []json.RawMessage{a}, Why: "early"})
		select {
		case <-holding:
		case <-time.After(time.Minute):
			t.Fatal("the slow pusher sent no status")
		}
		fast.Verdict(cachepush.Verdict{Kind: queue.EventPublished, Tenant: tenant, StorePath: storePath("race")})
		if err := fast.Close(testctx.New(t, time.Minute)); err != nil {
			t.Fatal(err)
		}
		close(release)
		if err := slow.Close(testctx.New(t, time.Minute)); err != nil {
			t.Fatal(err)
		}
		got := statuses(t, f, owner, repo, sha)
		var states []string
		for _, st := range got {
			states = append(states, string(st.State))
		}
		// The held failure landed after the success, and the slow
		// pusher, finding the record changed, sent the record's again.
		if !slices.Contains(states, "failure") {
			t.Fatalf("statuses %q: the held failure never landed", states)
		}
		if st := current(t, f, owner, repo, sha); st == nil || st.State != gitea.StatusSuccess {
			t.Errorf("the forge shows %+v after the race (all: %q), want success", st, states)
		}
	})

	t.Run("only configured forges, builders and repositories", func(t *testing.T) {
		f.PutFile(t, owner, repo, "evil.nix", []byte("{ }"))
		sha := f.HeadSHA(t, owner, repo)
		other, _ := f.CreateRepo(t, "elsewhere")
		// Signed provenance naming a forge nobody configured.
		evil := &attest.Workflow{Server: stranger.URL, Repository: owner + "/" + repo, Sha: sha}
		s.vote("a", "evil", "evil", evil)
		s.vote("b", "evil", "evil", evil)
		// c may build but not speak for the forge: with a, it makes the
		// quorum on a path of the commit, and only a's job counts.
		cjob := s.job(owner, repo, sha)
		s.vote("c", "cpath", "c", cjob)
		s.vote("a", "cpath", "c", &attest.Workflow{Server: stranger.URL + "/", Repository: owner + "/" + repo, Sha: sha})
		// A repository no pattern allows (another owner's).
		s.vote("a", "otherrepo", "o", &attest.Workflow{Server: f.URL, Repository: "someone/" + other, Sha: sha})
		s.vote("b", "otherrepo", "o", &attest.Workflow{Server: f.URL, Repository: "someone/" + other, Sha: sha})
		s.stop() // sends what is queued
		s.start()
		if got := statuses(t, f, owner, repo, sha); len(got) != 0 {
			t.Errorf("status set from a refused forge job: %s %q", got[0].State, got[0].Description)
		}
		for _, why := range []string{"forge not in the forges file", "builder or repository not allowed for the forge"} {
			if !strings.Contains(s.logs.String(), why) {
				t.Errorf("no refusal %q logged", why)
			}
		}
		if strangerHit.Load() != 0 {
			t.Errorf("the unconfigured forge was contacted %d times", strangerHit.Load())
		}
	})
	s.stop()
}

// TestConfig checks the forges file's refusals.
func TestConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tok"), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ok := "forges:\n  - {url: 'HTTPS://Forge.Example/', token_file: tok, builders: [a], repos: ['distro/*']}\n"
	fs, err := forgestatus.Parse([]byte(ok), dir)
	if err != nil {
		t.Fatal(err)
	}
	if fs.Forges[0].URL != "https://forge.example" {
		t.Errorf("url %q not normalised", fs.Forges[0].URL)
	}
	for name, y := range map[string]string{
		"no builders":   "forges:\n  - {url: https://f.example, token_file: tok, repos: ['a/*']}\n",
		"no repos":      "forges:\n  - {url: https://f.example, token_file: tok, builders: [a]}\n",
		"bad repo glob": "forges:\n  - {url: https://f.example, token_file: tok, builders: [a], repos: ['*']}\n",
		"no token":      "forges:\n  - {url: https://f.example, builders: [a], repos: ['a/*']}\n",
		"empty token":   "forges:\n  - {url: https://f.example, token_file: empty, builders: [a], repos: ['a/*']}\n",
		"missing token": "forges:\n  - {url: https://f.example, token_file: nope, builders: [a], repos: ['a/*']}\n",
		"user in url":   "forges:\n  - {url: 'https://u:p@f.example', token_file: tok, builders: [a], repos: ['a/*']}\n",
		"not http":      "forges:\n  - {url: 'ftp://f.example', token_file: tok, builders: [a], repos: ['a/*']}\n",
		"twice":         "forges:\n  - {url: https://f.example, token_file: tok, builders: [a], repos: ['a/*']}\n  - {url: 'https://F.example/', token_file: tok, builders: [a], repos: ['a/*']}\n",
		"unknown key":   "forges:\n  - {url: https://f.example, token: x, token_file: tok, builders: [a], repos: ['a/*']}\n",
	} {
		if _, err := forgestatus.Parse([]byte(y), dir); err == nil || !strings.Contains(err.Error(), "forges file") {
			t.Errorf("%s: accepted (%v)", name, err)
		}
	}
	if _, err := forgestatus.Parse([]byte(forgestatus.Example), dir); err == nil || !strings.Contains(err.Error(), "forge.token") {
		t.Errorf("the example parses up to its token file: %v", err)
	}
}
