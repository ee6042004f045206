package cachepush

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testdrv"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/storepath"
)

// hostileStack is issue 11's quorum stack: a nats-server (in process,
// configured from a file as a tenant operator's) with the tenant
// account testTenant whose users have the tenant permission sets (a
// pusher, an admin that watches, and one runner user per builder with
// queue.RunnerPermissions for its builder id), a pusher with a quorum of
// 2 distinct builders over b0, b1 and m, and a local cache store.
type hostileStack struct {
	admin    *queue.Conn
	runners  map[string]*queue.Conn // by builder id
	signers  map[string]*attest.Signer
	pusher   *Pusher
	store    *local.Store
	cachePub signature.PublicKey

	mu     sync.Mutex
	events []*nats.Msg
}

const (
	honest0 = "https://builders.example/b0"
	honest1 = "https://builders.example/b1"
	// m's id sorts first: the narinfo once took the alphabetically first
	// agreeing builder's references.
	hostile = "https://builders.example/a-mallory"
)

func newHostileStack(t *testing.T) *hostileStack {
	t.Helper()
	ctx := testctx.New(t, 60*time.Second)
	dir := t.TempDir()
	s := &hostileStack{runners: map[string]*queue.Conn{}, signers: map[string]*attest.Signer{}}

	// One NKey user per role, and one runner user per builder.
	var users strings.Builder
	seeds := map[string]string{}
	user := func(name string, perms queue.Permissions) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := kp.Seed()
		pub, _ := kp.PublicKey()
		seeds[name] = filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(name)+".nk")
		if err := os.WriteFile(seeds[name], seed, 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&users, "    {nkey: %s, permissions: {publish: {allow: %s}, subscribe: {allow: %s}}}\n",
			pub, quoteList(perms.Publish), quoteList(perms.Subscribe))
	}
	for _, role := range []queue.Role{queue.RolePusher, queue.RoleAdmin} {
		perms, err := queue.RolePermissions(testTenant, role)
		if err != nil {
			t.Fatal(err)
		}
		user(string(role), perms)
	}
	builders := []string{honest0, honest1, hostile}
	for _, id := range builders {
		perms, err := queue.RunnerPermissions(testTenant, id)
		if err != nil {
			t.Fatal(err)
		}
		user(id, perms)
	}
	url := startAccountServer(t, dir, "accounts {\n  "+testTenant+": {\n  jetstream: enabled\n  users: [\n"+users.String()+"  ]\n  }\n}\n")
	connect := func(name string) *queue.Conn {
		c, err := queue.Connect(ctx, url, queue.WithNKeySeedFile(seeds[name]))
		if err != nil {
			t.Fatalf("connect as %s: %v", name, err)
		}
		t.Cleanup(c.Close)
		return c
	}
	pc := connect(string(queue.RolePusher))
	if err := pc.EnsureStreams(ctx, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	s.admin = connect(string(queue.RoleAdmin))
	for _, id := range builders {
		s.runners[id] = connect(id)
	}

	// Real keys, a policy as issue 11's attack had it: quorum 2 of
	// distinct builders, an override of 1 for "*-docs", quarantine after 3.
	pol := "tenants: [" + testTenant + "]\nsystems: [x86_64-linux]\nquorum: {min: 2, distinct: builder}\n" +
		"overrides:\n  - names: [\"*-docs\"]\n    quorum: {min: 1}\nreputation: {quarantine_after: 3}\nbuilders:\n"
	for i, id := range builders {
		signer, err := attest.GenerateKeyFiles(filepath.Join(dir, "b"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		s.signers[id] = signer
		pol += fmt.Sprintf("  - {id: %q, key: b%d.pub, owner: owner%d}\n", id, i, i)
	}
	p, err := policy.Parse([]byte(pol), dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.cachePub, err = GenerateKeyFiles("hostile-cache-1", filepath.Join(dir, "cache")); err != nil {
		t.Fatal(err)
	}
	cacheKey, err := LoadKey(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	if s.store, err = local.New(filepath.Join(dir, "cache-dir")); err != nil {
		t.Fatal(err)
	}
	// Output paths are checked against the staged .drv closures.
	logs := &testlog.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pusher log:\n%s", tail(logs.String(), 8000))
		}
	})
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if s.pusher, err = New(Config{KV: pc, Store: s.store, Policy: p, CacheKey: cacheKey, Staging: pc, Events: pc, Logger: log,
		// A suspect builder's results beyond its share come back sooner
		// than the default 500 ms (growing to 1.28 s), so that the whole
		// flood is handled within the test's time.
		DeferDelay: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	sub, err := s.admin.NATS().Subscribe("events."+testTenant+".>", func(m *nats.Msg) {
		s.mu.Lock()
		s.events = append(s.events, m)
		s.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := s.admin.NATS().Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.pusher.Open(ctx, pc, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant), Concurrency: 4}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.pusher.Close(context.Background()) })
	return s
}

// startAccountServer runs the nats-server Provenix embeds (the module's,
// in process) with the accounts configuration conf, and returns its URL.
// Not Debian's nats-server 2.9.10 (testnats.Start): it ignores a Term
// with a reason, which the consumer sends for every rejection, so each
// rejected result would wait out its AckWait and come back.
func startAccountServer(t *testing.T, dir, conf string) string {
	t.Helper()
	cfg := filepath.Join(dir, "nats-server.conf")
	body := fmt.Sprintf("listen: \"127.0.0.1:-1\"\njetstream: {store_dir: %q}\n%s", filepath.Join(dir, "js"), conf)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(cfg)
	if err != nil {
		t.Fatalf("nats-server configuration: %v", err)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	return ns.ClientURL()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func quoteList(subjects []string) string {
	q := make([]string, len(subjects))
	for i, s := range subjects {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// vote is one builder's claim: derivation drv built path with NAR nar
// referring to refs.
type vote struct {
	builder string
	drv     *testdrv.Drv
	path    string
	nar     []byte
	refs    []string
}

// stage stages v's NAR and its derivation's closure in the builder's
// scope as builders do, with the builder's own runner user, and returns
// the signed result.
func (s *hostileStack) stage(t *testing.T, v vote) *queue.Result {
	t.Helper()
	ctx := testctx.New(t, 60*time.Second)
	c := s.runners[v.builder]
	sum := sha256.Sum256(v.nar)
	narKey := queue.ScopedKey(queue.StagingKey(hexOf(sum[:])), v.builder)
	if _, err := c.Stage(ctx, narKey, bytes.NewReader(v.nar)); err != nil {
		t.Fatalf("%s stages %s: %v", v.builder, narKey, err)
	}
	closure := queue.ScopedKey(queue.ClosureKey(v.drv.Path), v.builder)
	if _, err := c.Stage(ctx, closure, bytes.NewReader(v.drv.Export)); err != nil {
		t.Fatalf("%s stages %s: %v", v.builder, closure, err)
	}
	out := attest.Output{Name: "out", Path: v.path, NarHash: sum, NarSize: uint64(len(v.nar)), References: v.refs}
	st, err := attest.NewStatement(&attest.Build{DrvPath: v.drv.Path, System: "x86_64-linux", BuilderID: v.builder,
		Installable: attest.Installable{Kind: "drv", Ref: v.drv.Path}, Outputs: []attest.Output{out}})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attest.Sign(ctx, st, s.signers[v.builder])
	if err != nil {
		t.Fatal(err)
	}
	return &queue.Result{Version: queue.ResultVersion, Tenant: testTenant, Builder: v.builder, DrvPath: v.drv.Path, System: "x86_64-linux",
		Outputs: []queue.Output{{Name: "out", Path: v.path, NarHash: out.NarHashHex(), NarSize: out.NarSize, StagingKey: narKey, References: v.refs}},
		Bundle:  bundle, Closure: closure}
}

// publish publishes r with its builder's runner user.
func (s *hostileStack) publish(t *testing.T, r *queue.Result) {
	t.Helper()
	if _, err := s.runners[r.Builder].PublishResult(testctx.New(t, 60*time.Second), r); err != nil {
		t.Fatalf("%s publishes %s: %v", r.Builder, r.Outputs[0].Path, err)
	}
}

// idle waits until the pusher has handled everything published.
func (s *hostileStack) idle(t *testing.T) {
	t.Helper()
	consumerIdle(t, s.admin, "g", 60*time.Second)
}

// narinfo returns the narinfo of p, nil when p is not visible.
func (s *hostileStack) narinfo(t *testing.T, p string) *narinfo.NarInfo {
	t.Helper()
	b, err := store.ReadAll(testctx.New(t, 60*time.Second), s.store, cachelayout.NarinfoKey(p), 1<<20)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("narinfo of %s: %v\n%s", p, err, b)
	}
	return ni
}

func (s *hostileStack) countEvents(kind, builder, reason string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.events {
		var e struct{ Builder, Reason string }
		if strings.HasSuffix(m.Subject, "."+kind) && json.Unmarshal(m.Data, &e) == nil &&
			(builder == "" || e.Builder == builder) && (reason == "" || e.Reason == reason) {
			n++
		}
	}
	return n
}

// forgeMeta plays m writing a meta for key (another builder's scoped
// key) that points at garbage chunks in m's own scope and carries the
// digest and size of want: what runner users can write (metas are one
// subject token, not scoped by permission).
func forgeMeta(t *testing.T, m *queue.Conn, key string, want []byte) {
	t.Helper()
	ctx := testctx.New(t, 60*time.Second)
	js, err := jetstream.New(m.NATS())
	if err != nil {
		t.Fatal(err)
	}
	id := queue.StagingScope(hostile) + ".forged" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := js.Publish(ctx, "$O."+queue.BucketStaging+".C."+id, []byte("poison")); err != nil {
		t.Fatalf("m stages chunks in its own scope: %v", err)
	}
	d := sha256.Sum256(want)
	meta, _ := json.Marshal(&jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: key}, Bucket: queue.BucketStaging,
		NUID: id, Size: uint64(len(want)), Chunks: 1, Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(d[:])})
	msg := nats.NewMsg("$O." + queue.BucketStaging + ".M." + base64.URLEncoding.EncodeToString([]byte(key)))
	msg.Data = meta
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatalf("m writes a meta for %s: %v", key, err)
	}
}

// TestHostileBuilder is issue 11's hostile-builder end-to-end test: a
// quorum stack (2 distinct builders of 3) whose builders connect as
// runner users with the tenant permission sets. Honest b0 and b1 build a
// chain lib ← app ← top; m, whose key the policy trusts as much, runs
// attacks 1, 3, 5 and 6:
//
//   - 5: pre-poisons and afterwards forges metas for the honest builders'
//     staged keys, stages into their scope, purges and deletes staging;
//   - 3: signs the honest NARs of app (a reference dropped) and top (a
//     reference to another cached path added), before and between the
//     honest votes;
//   - 6: claims <H>-evil-docs for app's hash part, allowed a quorum of 1
//     by the "*-docs" override, from its own derivation and from app's;
//   - 1: floods 300 signed results with a newline in a reference's hash
//     part, just before the honest builders publish top.
//
// Every honest path is published with exactly the honest references,
// top within a bound although the whole flood was queued before its
// second vote; nothing m alone claims is; m's answers are disputed, its
// squats rejected, its flood charged to it and it is quarantined; the
// honest builders are charged nothing.
func TestHostileBuilder(t *testing.T) {
	begin := time.Now()
	s := newHostileStack(t)
	ctx := testctx.New(t, 60*time.Second)
	phase := func(what string) { t.Logf("%s: %s", time.Since(begin).Round(time.Millisecond), what) }
	phase("stack up")
	m := s.runners[hostile]
	tag := strconv.FormatInt(time.Now().UnixNano(), 36)
	drv := func(name string) *testdrv.Drv {
		d, err := testdrv.New(name+"-"+tag, "x86_64-linux")
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	lib, app, top := drv("lib"), drv("app"), drv("top")
	narLib, narApp, narTop := narOf(t, "lib "+tag), narOf(t, "app "+tag), narOf(t, "top "+tag)
	honestRefs := map[string][]string{lib.Out: nil, app.Out: {lib.Out}, top.Out: {app.Out}}
	votes := func(d *testdrv.Drv, nar []byte) (v0, v1 vote) {
		return vote{builder: honest0, drv: d, path: d.Out, nar: nar, refs: honestRefs[d.Out]},
			vote{builder: honest1, drv: d, path: d.Out, nar: nar, refs: honestRefs[d.Out]}
	}

	// Attack 5, before: m pre-poisons the keys the honest builders will
	// stage under (reproducible builds make them predictable), and tries
	// to stage into their scope.
	for _, b := range []string{honest0, honest1} {
		for _, v := range []struct {
			d   *testdrv.Drv
			nar []byte
		}{{lib, narLib}, {app, narApp}, {top, narTop}} {
			sum := sha256.Sum256(v.nar)
			forgeMeta(t, m, queue.ScopedKey(queue.StagingKey(hexOf(sum[:])), b), v.nar)
			forgeMeta(t, m, queue.ScopedKey(queue.ClosureKey(v.d.Path), b), v.d.Export)
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := m.Stage(sctx, queue.ScopedKey(queue.ClosureKey(app.Path), b), bytes.NewReader([]byte("evil closure")))
		cancel()
		if !errors.Is(err, queue.ErrPermissionDenied) {
			t.Fatalf("m stages into %s's scope: %v, want %v", b, err, queue.ErrPermissionDenied)
		}
	}

	phase("attack 5 before")
	// Honest builders stage; m forges again afterwards, tries to purge
	// staging and delete their objects; only then do they publish.
	l0, l1 := votes(lib, narLib)
	a0, a1 := votes(app, narApp)
	rl0, rl1, ra0, ra1 := s.stage(t, l0), s.stage(t, l1), s.stage(t, a0), s.stage(t, a1)
	for _, r := range []*queue.Result{rl0, rl1, ra0, ra1} {
		forgeMeta(t, m, r.Outputs[0].StagingKey, []byte("whatever"))
		forgeMeta(t, m, r.Closure, []byte("whatever"))
	}
	js, err := jetstream.New(m.NATS())
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, "OBJ_"+queue.BucketStaging)
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err = stream.Purge(pctx)
	cancel()
	if err == nil {
		t.Fatal("m purged the staging stream")
	}
	for _, r := range []*queue.Result{rl0, ra1} {
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_ = m.DeleteStaged(dctx, r.Outputs[0].StagingKey) // a meta may go; the scoped chunks stay
		cancel()
	}

	phase("attack 5 after")
	// Attack 3 on app, first to arrive: the very NAR the honest builders
	// sign, its dependency dropped.
	s.publish(t, s.stage(t, vote{builder: hostile, drv: app, path: app.Out, nar: narApp}))
	s.idle(t)
	// Attack 6: <H>-evil-docs for app's hash part, under its own
	// derivation and under app's (whose .drv anyone can stage).
	squat := storepath.Dir + "/" + path.Base(app.Out)[:32] + "-evil-docs"
	evilDocs := drv("evil-docs")
	narEvil := narOf(t, "evil "+tag)
	s.publish(t, s.stage(t, vote{builder: hostile, drv: evilDocs, path: squat, nar: narEvil}))
	s.publish(t, s.stage(t, vote{builder: hostile, drv: app, path: squat, nar: narEvil}))
	// What m alone claims, with a quorum of 2: its own derivation.
	mOnly := drv("m-only")
	s.publish(t, s.stage(t, vote{builder: hostile, drv: mOnly, path: mOnly.Out, nar: narOf(t, "m only "+tag), refs: []string{lib.Out}}))
	s.idle(t)
	if n := s.countEvents(queue.EventRejected, hostile, ReasonOutputPath); n != 2 {
		t.Errorf("%d output-path rejections of m's squats, want 2", n)
	}
	for _, r := range []*queue.Result{rl0, ra0, rl1, ra1} {
		s.publish(t, r)
		s.idle(t)
	}

	phase("lib and app")
	// Attack 3 on top, between the honest votes: a reference to another
	// cached path added. Then attack 1, and the honest builders publish
	// top into the flood.
	t0, t1 := votes(top, narTop)
	rt0, rt1 := s.stage(t, t0), s.stage(t, t1)
	s.publish(t, rt0)
	s.idle(t)
	s.publish(t, s.stage(t, vote{builder: hostile, drv: top, path: top.Out, nar: narTop, refs: []string{app.Out, lib.Out}}))
	s.idle(t)
	phase("attack 3 on top")
	const flood = 300
	floodMsgs := make([]*nats.Msg, flood)
	for i := range flood {
		_, data := signed(t, s.signers[hostile], hostile, fmt.Sprintf("flood-%s-%d", tag, i), "nar/p", []string{badHashPath}, nil)
		floodMsgs[i] = nats.NewMsg("results." + testTenant + ".x86_64-linux")
		floodMsgs[i].Data = data
	}
	// All at once, as fast as m's connection allows.
	for _, msg := range floodMsgs {
		if _, err := m.JetStream().PublishMsgAsync(msg); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-m.JetStream().PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("flood not acknowledged")
	}
	handled := s.countEvents(queue.EventRejected, hostile, ReasonMalformed)
	phase("flood published")
	start := time.Now()
	s.publish(t, rt1)
	const bound = 15 * time.Second
	for s.narinfo(t, top.Out) == nil {
		if time.Since(start) > bound {
			t.Fatalf("top not published %s after its second honest vote, into a flood of %d", bound, flood)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("top published %s after its second honest vote, into a flood of %d of which %d were handled when it was published",
		time.Since(start).Round(time.Millisecond), flood, handled)
	// The flood's tail is deferred with growing delays (up to 30 s: a
	// suspect builder's backlog is thinned out, by design), so its end
	// is not awaited: m must be quarantined by then.
	var rep *Reputation
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r, err := GetReputation(ctx, s.admin, hostile)
		if err == nil && r.Quarantined {
			rep = r
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("m not quarantined 20 s into its flood: %+v, %v", r, err)
		}
	}

	// Every honest path, with exactly the honest references, signed by
	// the cache, its NAR the honest one.
	for _, p := range []string{lib.Out, app.Out, top.Out} {
		ni := s.narinfo(t, p)
		if ni == nil {
			t.Errorf("honest %s not published", p)
			continue
		}
		var want []string
		for _, r := range honestRefs[p] {
			want = append(want, path.Base(r))
		}
		if !slices.Equal(ni.References, want) {
			t.Errorf("%s: references %v, want the honest %v", p, ni.References, want)
		}
		if ni.StorePath != p || !signature.VerifyFirst(ni.Fingerprint(), ni.Signatures, []signature.PublicKey{s.cachePub}) {
			t.Errorf("%s: narinfo names %s, or its signature does not verify", p, ni.StorePath)
		}
	}
	if ni := s.narinfo(t, app.Out); ni != nil && ni.NarSize != uint64(len(narApp)) {
		t.Errorf("app: NarSize %d, want the honest %d", ni.NarSize, len(narApp))
	}
	// Nothing m alone claims: not its own derivation, not the squat (whose
	// narinfo would be app's), not the flood.
	if ni := s.narinfo(t, mOnly.Out); ni != nil {
		t.Errorf("%s, claimed by m alone, published", mOnly.Out)
	}
	if ni := s.narinfo(t, squat); ni != nil && ni.StorePath != app.Out {
		t.Errorf("%s's narinfo names %s", path.Base(app.Out)[:32], ni.StorePath)
	}
	// Attack 3 was heard as what it is: m's answers (same NAR, other
	// references) disputed the honest ones, on app and on top.
	disputed := map[string]bool{}
	s.mu.Lock()
	for _, msg := range s.events {
		var d Dispute
		if strings.HasSuffix(msg.Subject, "."+EventDisputed) && json.Unmarshal(msg.Data, &d) == nil && len(d.Answers) > 1 {
			for _, a := range d.Answers {
				if slices.Contains(a.Builders, hostile) && a.NarSHA256 != "" {
					disputed[d.StorePath] = true
				}
			}
		}
	}
	s.mu.Unlock()
	if !disputed[app.Out] || !disputed[top.Out] {
		t.Errorf("disputes with m's answer: %v, want app and top", disputed)
	}
	var narinfos []string
	err = s.store.List(ctx, "", func(i store.Info) error {
		if strings.HasSuffix(i.Key, ".narinfo") {
			narinfos = append(narinfos, i.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(narinfos) != 3 {
		t.Errorf("cache holds %d narinfos %v, want the 3 honest ones", len(narinfos), narinfos)
	}

	// m is charged for the flood and quarantined; the honest builders
	// are not charged at all.
	if rep.Malformed < 3 || rep.QuarantinedAt == nil {
		t.Errorf("m quarantined with %d malformed results charged, quarantined at %v", rep.Malformed, rep.QuarantinedAt)
	}
	t.Logf("%s: m quarantined, %d malformed results charged so far", time.Since(begin).Round(time.Millisecond), rep.Malformed)
	for _, b := range []string{honest0, honest1} {
		// Agreements are stored within the pusher's ReputationFlush
		// of the path becoming visible: until then an honest builder
		// may have no record at all.
		deadline := time.Now().Add(5 * time.Second)
		r, err := GetReputation(ctx, s.admin, b)
		for (errors.Is(err, ErrNoReputation) || err == nil && r.Agreements < 3) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			r, err = GetReputation(ctx, s.admin, b)
		}
		if err != nil {
			t.Fatalf("reputation of %s: %v", b, err)
		}
		if r.Malformed != 0 || r.Quarantined || r.Agreements != 3 {
			t.Errorf("honest %s: %+v, want 3 agreements and no charge", b, r)
		}
	}
	if n := s.countEvents(queue.EventRejected, honest0, "") + s.countEvents(queue.EventRejected, honest1, ""); n != 0 {
		t.Errorf("%d rejections of honest results", n)
	}
	if n := s.countEvents(EventDeadLetter, "", ""); n != 0 {
		t.Errorf("%d dead letters", n)
	}
}
