package tenant

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/queue"
)

// cluster is a nats-server whose configuration includes the account
// snippets of the tenants Add created in dir.
type cluster struct {
	srv     *testnats.Server
	tenants map[string]*Tenant
}

func startTenants(t *testing.T, limits map[string]Limits, names ...string) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{tenants: map[string]*Tenant{}}
	var inc strings.Builder
	for _, n := range names {
		l, ok := limits[n]
		if !ok {
			// Not the default 10 GiB: nats-server refuses to start when
			// the accounts' max_file add up to more than the disk has
			// free, and these tests store a few MiB.
			l.MaxFile = 1 << 30
		}
		tn, err := Add(Options{Name: n, Dir: filepath.Join(dir, n), Limits: l})
		if err != nil {
			t.Fatal(err)
		}
		c.tenants[n] = tn
		fmt.Fprintf(&inc, "  include %q\n", filepath.Join(n, FileAccount))
	}
	c.srv = testnats.Start(t, dir, "accounts {\n"+inc.String()+"}\n", true)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nats-server log (denials):\n%s", grepLines(c.srv.Log(), "Violation", "ERR"))
		}
	})
	return c
}

func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

func (c *cluster) connect(t *testing.T, tenant string, role queue.Role) *queue.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := queue.Connect(ctx, c.srv.URL, queue.WithNKeySeedFile(c.tenants[tenant].Path(SeedFile(role))))
	if err != nil {
		t.Fatalf("connect %s/%s: %v", tenant, role, err)
	}
	t.Cleanup(conn.Close)
	return conn
}

// result is a well-formed result of tenant for a staged NAR.
func result(tenant string, i int, narHash string) *queue.Result {
	return &queue.Result{
		Version: queue.ResultVersion,
		Tenant:  tenant,
		Builder: tenant + "-runner",
		DrvPath: fmt.Sprintf("/nix/store/%032d-t-%d.drv", i, i),
		System:  "x86_64-linux",
		Outputs: []queue.Output{{
			Name: "out", Path: fmt.Sprintf("/nix/store/%032d-t-%d", i, i),
			NarHash: narHash, NarSize: 5, StagingKey: queue.StagingKey(narHash),
		}},
		Bundle: json.RawMessage(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`),
	}
}

// stage stages content as runner and returns a result naming it.
func stage(t *testing.T, runner *queue.Conn, tenant string, i int, content []byte) *queue.Result {
	t.Helper()
	sum := sha256.Sum256(content)
	h := hex.EncodeToString(sum[:])
	key := queue.ScopedKey(queue.StagingKey(h), tenant+"-runner")
	if _, err := runner.Stage(testctx.New(t, 20*time.Second), key, bytes.NewReader(content)); err != nil {
		t.Fatalf("%s runner: Stage: %v", tenant, err)
	}
	r := result(tenant, i, h)
	r.Outputs[0].StagingKey = key
	return r
}

// fast fails the test unless err matches want and came well before the
// call's own timeout: a denial must not look like a slow broker.
func fast(t *testing.T, what string, start time.Time, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("%s took %s: the denial was not detected, the call timed out", what, d)
	}
}

// TestTenantIsolation runs tenants a and b on one nats-server configured
// with the snippets Add wrote, and checks what each user can and cannot do.
func TestTenantIsolation(t *testing.T) {
	c := startTenants(t, nil, "a", "b")
	pusherA, pusherB := c.connect(t, "a", queue.RolePusher), c.connect(t, "b", queue.RolePusher)
	runnerA, runnerB := c.connect(t, "a", queue.RoleRunner), c.connect(t, "b", queue.RoleRunner)
	for _, p := range []*queue.Conn{pusherA, pusherB} {
		if err := p.EnsureStreams(testctx.New(t, 20*time.Second), queue.StreamOptions{}); err != nil {
			t.Fatalf("pusher EnsureStreams: %v", err)
		}
	}

	// The runners stage and publish their own tenant's results.
	// Big enough for the ordered consumer reading it to need flow control.
	narA := make([]byte, 4<<20)
	rand.Read(narA)
	ra := stage(t, runnerA, "a", 1, narA)
	if _, err := runnerA.PublishResult(testctx.New(t, 20*time.Second), ra); err != nil {
		t.Fatalf("a runner: publish a's result: %v", err)
	}
	rb := stage(t, runnerB, "b", 2, []byte("NAR b"))
	if _, err := runnerB.PublishResult(testctx.New(t, 20*time.Second), rb); err != nil {
		t.Fatalf("b runner: publish b's result: %v", err)
	}

	t.Run("a user the server does not know is refused at once", func(t *testing.T) {
		stranger, err := Add(Options{Name: "a", Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = queue.Connect(testctx.New(t, 20*time.Second), c.srv.URL, queue.WithNKeySeedFile(stranger.Path(SeedFile(queue.RoleRunner))))
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Fatalf("connect with an unknown nkey: %v", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("refusal took %s", d)
		}
	})
	t.Run("runner cannot publish another tenant's results", func(t *testing.T) {
		forged := result("b", 3, ra.Outputs[0].NarHash)
		start := time.Now()
		_, err := runnerA.PublishResult(context.Background(), forged)
		fast(t, "a runner publishes b's result", start, err, queue.ErrPermissionDenied)
	})
	t.Run("runner cannot consume", func(t *testing.T) {
		for _, filter := range []string{queue.ResultsFilter("a"), queue.ResultsFilter("b")} {
			start := time.Now()
			_, err := runnerA.ConsumeResults(context.Background(), queue.ConsumerOptions{Group: "cache", FilterSubject: filter},
				func(context.Context, *queue.Delivery) error { return nil })
			fast(t, "a runner consumes "+filter, start, err, queue.ErrPermissionDenied)
		}
	})
	t.Run("pusher cannot consume another tenant's results", func(t *testing.T) {
		start := time.Now()
		_, err := pusherA.ConsumeResults(context.Background(), queue.ConsumerOptions{Group: "cache", FilterSubject: queue.ResultsFilter("b")},
			func(context.Context, *queue.Delivery) error { return nil })
		fast(t, "a pusher consumes b's results", start, err, queue.ErrPermissionDenied)
		// Nor read b's staged NARs: b's staging bucket is in b's account.
		_, _, err = pusherA.OpenStaged(testctx.New(t, 20*time.Second), rb.Outputs[0].StagingKey)
		if !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("a pusher opens b's staged NAR: %v, want ErrNotFound", err)
		}
	})
	t.Run("pusher cannot publish results nor stage", func(t *testing.T) {
		start := time.Now()
		_, err := pusherA.PublishResult(context.Background(), result("a", 4, ra.Outputs[0].NarHash))
		fast(t, "a pusher publishes a result", start, err, queue.ErrPermissionDenied)
		start = time.Now()
		_, err = pusherA.Stage(context.Background(), "k", strings.NewReader("x"))
		fast(t, "a pusher stages", start, err, queue.ErrPermissionDenied)
	})
	t.Run("pusher consumes its own tenant's results only", func(t *testing.T) {
		got := make(chan *queue.Delivery, 10)
		k, err := pusherA.ConsumeResults(testctx.New(t, 20*time.Second), queue.ConsumerOptions{Group: "cache", FilterSubject: queue.ResultsFilter("a")},
			func(ctx context.Context, d *queue.Delivery) error {
				got <- d
				return nil
			})
		if err != nil {
			t.Fatalf("a pusher consumes a's results: %v", err)
		}
		defer func() { k.Stop(); <-k.Closed() }()
		select {
		case d := <-got:
			if d.MsgID != ra.MsgID() {
				t.Fatalf("a pusher got %s (%s), want a's result", d.Subject, d.MsgID)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a pusher got nothing")
		}
		// Reading a's NAR, the votes and publishing events: what a pusher does.
		rc, _, err := pusherA.OpenStaged(testctx.New(t, 20*time.Second), ra.Outputs[0].StagingKey)
		if err != nil {
			t.Fatalf("a pusher opens a's staged NAR: %v", err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(b, narA) {
			t.Fatalf("a's staged NAR: %d bytes, %v", len(b), err)
		}
		own, other := queue.VoteKey("a", ra.Outputs[0].Path, "a-runner"), queue.VoteKey("a", ra.Outputs[0].Path, "a-other")
		if err := pusherA.KVPut(testctx.New(t, 20*time.Second), queue.BucketVotes, other, []byte("v")); err != nil {
			t.Fatal(err)
		}
		if err := pusherA.KVPut(testctx.New(t, 20*time.Second), queue.BucketVotes, own, []byte("v")); err != nil {
			t.Fatalf("a pusher KVPut: %v", err)
		}
		// The entries waiting for their references: the pusher's alone.
		wk := queue.WaitingKey("a", ra.Outputs[0].Path)
		if err := pusherA.KVPut(testctx.New(t, 20*time.Second), queue.BucketWaiting, wk, []byte("w")); err != nil {
			t.Fatalf("a pusher writes a waiting entry: %v", err)
		}
		if m, err := pusherA.KVList(testctx.New(t, 20*time.Second), queue.BucketWaiting, queue.WaitingPrefix); err != nil || len(m) != 1 {
			t.Fatalf("a pusher lists waiting entries: %v, %v", m, err)
		}
		if err := pusherA.KVDelete(testctx.New(t, 20*time.Second), queue.BucketWaiting, wk); err != nil {
			t.Fatalf("a pusher deletes a waiting entry: %v", err)
		}
		start0 := time.Now()
		err = runnerA.KVPut(context.Background(), queue.BucketWaiting, wk, []byte("forged"))
		fast(t, "a runner writes a waiting entry", start0, err, queue.ErrPermissionDenied)
		if _, err := pusherA.KVList(testctx.New(t, 20*time.Second), queue.BucketBuilders, ""); err != nil {
			t.Fatalf("a pusher KVList: %v", err)
		}
		if err := pusherA.KVUpdate(testctx.New(t, 20*time.Second), queue.BucketBuilders, "k", func([]byte) ([]byte, error) { return []byte("1"), nil }); err != nil {
			t.Fatalf("a pusher KVUpdate: %v", err)
		}
		if err := pusherA.PublishEvent(testctx.New(t, 20*time.Second), "a", queue.EventPublished, 1); err != nil {
			t.Fatalf("a pusher publishes an event: %v", err)
		}
		start := time.Now()
		err = pusherA.PublishEvent(context.Background(), "b", queue.EventPublished, 1)
		fast(t, "a pusher publishes b's event", start, err, queue.ErrPermissionDenied)
		// The volunteer's side of a runner: a's rebuilds and votes.
		if _, err := runnerA.KVGet(testctx.New(t, 20*time.Second), queue.BucketVotes, own); err != nil {
			t.Fatalf("a runner reads its own vote: %v", err)
		}
		// Another builder's pending vote would tell it what to vote
		// without building.
		start = time.Now()
		_, err = runnerA.KVGet(context.Background(), queue.BucketVotes, other)
		fast(t, "a runner reads another builder's vote", start, err, queue.ErrPermissionDenied)
		start = time.Now()
		err = runnerA.KVPut(context.Background(), queue.BucketVotes, own, []byte("forged"))
		fast(t, "a runner writes a vote", start, err, queue.ErrPermissionDenied)
		if v, err := pusherA.KVGet(testctx.New(t, 20*time.Second), queue.BucketVotes, own); err != nil || string(v) != "v" {
			t.Fatalf("vote after the denied write: %q, %v", v, err)
		}
		rc, _, err = runnerA.OpenStaged(testctx.New(t, 20*time.Second), ra.Outputs[0].StagingKey)
		if err != nil {
			t.Fatalf("a runner opens a's staged NAR: %v", err)
		}
		rc.Close()
	})
	t.Run("runner rebuilds its own tenant only", func(t *testing.T) {
		req := &queue.RebuildRequest{Version: queue.RebuildVersion, Requested: time.Now(), Tenant: "a", System: "x86_64-linux", DrvPath: ra.DrvPath, Outputs: []string{ra.Outputs[0].Path}}
		if _, err := pusherA.PublishRebuild(testctx.New(t, 20*time.Second), req); err != nil {
			t.Fatalf("a pusher requests a rebuild: %v", err)
		}
		got := make(chan string, 1)
		subj, _ := queue.RebuildSubject("a", "x86_64-linux")
		k, err := runnerA.ConsumeRebuilds(testctx.New(t, 20*time.Second), queue.ConsumerOptions{FilterSubject: subj}, func(_ context.Context, d *queue.Delivery) error {
			got <- d.Subject
			return nil
		})
		if err != nil {
			t.Fatalf("a runner consumes a's rebuilds: %v", err)
		}
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("a runner got no rebuild request")
		}
		k.Stop()
		<-k.Closed()
		cannotTakeOver(t, runnerA, queue.StreamRebuild, queue.RebuildConsumer("a", "x86_64-linux"), subj, "rebuild.a.aarch64-linux")
		// b's rebuild requests: a's pusher may neither publish them nor
		// provide their consumer, and a's runner may not create one, so
		// there is none to take them from.
		subj, _ = queue.RebuildSubject("b", "x86_64-linux")
		start := time.Now()
		reqB := *req
		reqB.Tenant = "b"
		_, err = pusherA.PublishRebuild(testctx.New(t, 20*time.Second), &reqB)
		fast(t, "a's pusher requests b's rebuilds", start, err, queue.ErrPermissionDenied)
		start = time.Now()
		_, err = runnerA.ConsumeRebuilds(context.Background(), queue.ConsumerOptions{FilterSubject: subj}, func(context.Context, *queue.Delivery) error { return nil })
		fast(t, "a runner consumes b's rebuilds", start, err, queue.ErrNoConsumer)
	})
}

// TestTenantQuota: a tenant whose account allows 1 MiB of storage gets
// ErrQuotaExceeded, naming max_file, when it stages more.
func TestTenantQuota(t *testing.T) {
	c := startTenants(t, map[string]Limits{"q": {MaxFile: 1 << 20}}, "q")
	pusher, runner := c.connect(t, "q", queue.RolePusher), c.connect(t, "q", queue.RoleRunner)
	if err := pusher.EnsureStreams(testctx.New(t, 20*time.Second), queue.StreamOptions{}); err != nil {
		t.Fatalf("EnsureStreams: %v", err)
	}
	small := stage(t, runner, "q", 1, []byte("a small NAR"))
	if _, err := runner.PublishResult(testctx.New(t, 20*time.Second), small); err != nil {
		t.Fatalf("publish within the quota: %v", err)
	}
	big := make([]byte, 3<<20)
	rand.Read(big)
	start := time.Now()
	_, err := runner.Stage(context.Background(), queue.ScopedKey("nar/big", "q-runner"), bytes.NewReader(big))
	if !errors.Is(err, queue.ErrQuotaExceeded) {
		t.Fatalf("Stage over the quota: %v, want ErrQuotaExceeded", err)
	}
	if !strings.Contains(err.Error(), "max_file") {
		t.Errorf("error does not name the limit: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("quota error took %s", d)
	}
	t.Logf("over quota: %v", err)
	// The failed upload left nothing behind: the tenant can go on.
	again := stage(t, runner, "q", 2, []byte("another small NAR"))
	if _, err := runner.PublishResult(testctx.New(t, 20*time.Second), again); err != nil {
		t.Fatalf("publish after the refused upload: %v", err)
	}
}

func TestAddRefusesOverwriteAndBadNames(t *testing.T) {
	dir := t.TempDir()
	if _, err := Add(Options{Name: "a", Dir: dir}); err != nil {
		t.Fatal(err)
	}
	seed, _ := os.ReadFile(filepath.Join(dir, SeedFile(queue.RoleRunner)))
	if _, err := Add(Options{Name: "a", Dir: dir}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Add: %v", err)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, SeedFile(queue.RoleRunner))); !bytes.Equal(seed, again) {
		t.Fatal("second Add changed the seed")
	}
	// A tenant made before the submitter role has no submitter.nk: Add
	// still refuses its directory, and creates nothing in it.
	if err := os.Remove(filepath.Join(dir, SeedFile(queue.RoleSubmitter))); err != nil {
		t.Fatal(err)
	}
	if _, err := Add(Options{Name: "a", Dir: dir}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("Add over a tenant without submitter.nk: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, SeedFile(queue.RoleSubmitter))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Add over an older tenant created its submitter seed: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, SeedFile(queue.RolePusher)))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("seed file mode: %v %v", fi.Mode(), err)
	}
	for _, n := range []string{"", "A", "a.b", "-a", "a>", "a b", strings.Repeat("a", 65)} {
		if _, err := Add(Options{Name: n, Dir: t.TempDir()}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Add(%q): %v, want ErrInvalidName", n, err)
		}
	}
	if _, err := Add(Options{Name: "s", Dir: t.TempDir(), BuilderID: queue.SubmitterBuilderID("s")}); err == nil {
		t.Error("the runner's builder id is the submitter's staging scope: accepted")
	}
	if _, err := Add(Options{Name: "s", Dir: t.TempDir(), Limits: Limits{MaxStreams: 3}}); err == nil {
		t.Error("max streams 3 accepted: Provenix needs 6")
	}
}
