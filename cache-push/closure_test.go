package cachepush

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/prometheus/client_golang/prometheus"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/contentaddr"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/metrics"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/storepath"
	"codeberg.org/provenix/provenix/vsa"
)

// closureFixture is a pusher on a real NATS with builders b0, b1, …,
// each with its own real key, and a store that records the order in
// which narinfos become visible.
type closureFixture struct {
	*fixture
	dir     string
	signers map[string]*attest.Signer
	order   *orderStore
	pol     *policy.Policy
	cfg     Config
}

// orderStore records the keys of committed narinfos, in order.
type orderStore struct {
	store.Store
	mu   sync.Mutex
	keys []string
}

func (o *orderStore) Create(ctx context.Context) (store.Pending, error) {
	p, err := o.Store.Create(ctx)
	if err != nil {
		return nil, err
	}
	return &orderPending{Pending: p, o: o}, nil
}

type orderPending struct {
	store.Pending
	o *orderStore
}

func (p *orderPending) Commit(ctx context.Context, key string) error {
	if err := p.Pending.Commit(ctx, key); err != nil {
		return err
	}
	if strings.HasSuffix(key, ".narinfo") {
		p.o.mu.Lock()
		p.o.keys = append(p.o.keys, key)
		p.o.mu.Unlock()
	}
	return nil
}

func (o *orderStore) visible() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.keys)
}

func newClosureFixture(t *testing.T, policyExtra string, builders int, mod func(*Config)) *closureFixture {
	t.Helper()
	f := newFixture(t)
	dir := t.TempDir()
	cf := &closureFixture{fixture: f, dir: dir, signers: map[string]*attest.Signer{}}
	pol := "tenants: [" + testTenant + "]\nsystems: [x86_64-linux]\n" + policyExtra + "builders:\n"
	for i := range builders {
		id := "b" + string(rune('0'+i))
		s, err := attest.GenerateKeyFiles(filepath.Join(dir, id))
		if err != nil {
			t.Fatal(err)
		}
		cf.signers[id] = s
		pol += "  - {id: " + id + ", key: " + id + ".pub}\n"
	}
	p, err := policy.Parse([]byte(pol), dir)
	if err != nil {
		t.Fatal(err)
	}
	cf.pol = p
	cf.order = &orderStore{Store: f.store}
	cf.cfg = Config{KV: f.conn, Store: cf.order, Policy: p, CacheKey: f.pusher.cfg.CacheKey, Staging: f.conn, Events: f.conn,
		SweepEvery: 50 * time.Millisecond, Metrics: nil, VSA: f.pusher.cfg.VSA, UncheckedOutputPathsUnsafe: true}
	if mod != nil {
		mod(&cf.cfg)
	}
	if cf.pusher, err = New(cf.cfg); err != nil {
		t.Fatal(err)
	}
	return cf
}

// narOf serialises a directory holding one file with content.
func narOf(t *testing.T, content string) []byte { return makeNAR(t, content) }

// fileNAR serialises a single regular file.
func fileNAR(t *testing.T, content string, exec bool) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	mode := os.FileMode(0o644)
	if exec {
		mode = 0o755
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, p); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// drvResult is a signed result of builder for derivation name with one
// output "out" at path (storePath(name) when empty) whose NAR is narBytes,
// referring to refs.
type drvResult struct {
	name, builder, path, ca string
	// drv is the derivation (storePath(name+".drv") when empty).
	drv     string
	nar     []byte
	refs    []string
	sources []queue.Output
}

func (cf *closureFixture) result(t *testing.T, d drvResult) (*queue.Result, []byte) {
	t.Helper()
	ctx := testctx.New(t, 60*time.Second)
	if d.builder == "" {
		d.builder = "b0"
	}
	if d.path == "" {
		d.path = storePath(d.name)
	}
	if d.nar == nil {
		d.nar = narOf(t, d.name)
	}
	out := attest.Output{Name: "out", Path: d.path, NarHash: sha256.Sum256(d.nar), NarSize: uint64(len(d.nar)), References: d.refs}
	drv := d.drv
	if drv == "" {
		drv = storePath(d.name + ".drv")
	}
	st, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: "x86_64-linux", BuilderID: d.builder,
		Installable: attest.Installable{Kind: "drv", Ref: drv}, Outputs: []attest.Output{out}})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attest.Sign(ctx, st, cf.signers[d.builder])
	if err != nil {
		t.Fatal(err)
	}
	key := queue.StagingKey(out.NarHashHex())
	if _, err := cf.conn.Stage(ctx, key, bytes.NewReader(d.nar)); err != nil {
		t.Fatal(err)
	}
	r := &queue.Result{Version: queue.ResultVersion, Tenant: testTenant, Builder: d.builder, DrvPath: drv, System: "x86_64-linux",
		Outputs: []queue.Output{{Name: "out", Path: out.Path, NarHash: out.NarHashHex(), NarSize: out.NarSize, StagingKey: key, References: d.refs, CA: d.ca}},
		Sources: d.sources, Bundle: bundle}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return r, data
}

// source stages a content-addressed path and returns it as a result
// source: NAR narBytes, address made with method, references refs.
func (cf *closureFixture) source(t *testing.T, name string, narBytes []byte, m contentaddr.Method, content []byte, refs []string) queue.Output {
	t.Helper()
	c := contentaddr.CA{Method: m}
	if m == contentaddr.Recursive {
		c.Hash = sha256.Sum256(narBytes)
	} else {
		c.Hash = sha256.Sum256(content)
	}
	p, err := c.StorePath(storepath.Dir, name, refs, false)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(narBytes)
	o := queue.Output{Name: "source", Path: p, NarHash: hexOf(h[:]), NarSize: uint64(len(narBytes)),
		StagingKey: queue.StagingKey(hexOf(h[:])), References: refs, CA: c.String()}
	if _, err := cf.conn.Stage(testctx.New(t, 60*time.Second), o.StagingKey, bytes.NewReader(narBytes)); err != nil {
		t.Fatal(err)
	}
	return o
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func (cf *closureFixture) process(t *testing.T, r *queue.Result, data []byte) {
	t.Helper()
	if err := cf.pusher.Process(testctx.New(t, 60*time.Second), subject(r), data, r.MsgID()); err != nil {
		t.Fatalf("Process %s: %v", r.DrvPath, err)
	}
}

func (cf *closureFixture) isVisible(t *testing.T, storePath string) bool {
	t.Helper()
	_, err := cf.store.Stat(testctx.New(t, 60*time.Second), cachelayout.NarinfoKey(storePath))
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if err == nil && cf.cfg.VSA != nil {
		// Every visible path has its verification summary.
		cf.checkVSA(t, cf.pusher, storePath)
	}
	return err == nil
}

// events returns the store paths of the events of kind, in order.
func (f *fixture) eventPaths(kind string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, m := range f.events {
		if !strings.HasSuffix(m.Subject, "."+kind) {
			continue
		}
		var e struct {
			StorePath string `json:"storePath"`
		}
		json.Unmarshal(m.Data, &e)
		out = append(out, e.StorePath)
	}
	return out
}

// TestClosureDependentsFirst: a diamond published dependents first is
// held (nothing visible, no "published" event, each waiting for what it
// lacks), then becomes visible in dependency order once the bottom
// arrives.
func TestClosureDependentsFirst(t *testing.T) {
	cf := newClosureFixture(t, "", 1, nil)
	ctx := testctx.New(t, 60*time.Second)
	dep, left, right, top := storePath("dep"), storePath("left"), storePath("right"), storePath("top")
	rTop, dTop := cf.result(t, drvResult{name: "top", refs: []string{top, left, right}})
	rLeft, dLeft := cf.result(t, drvResult{name: "left", refs: []string{dep}})
	rRight, dRight := cf.result(t, drvResult{name: "right", refs: []string{dep, right}})
	rDep, dDep := cf.result(t, drvResult{name: "dep"})

	cf.process(t, rTop, dTop)
	cf.process(t, rLeft, dLeft)
	cf.process(t, rRight, dRight)
	if v := cf.order.visible(); len(v) != 0 {
		t.Fatalf("visible before their references: %v", v)
	}
	time.Sleep(50 * time.Millisecond) // events are asynchronous
	if p := cf.eventPaths(queue.EventPublished); len(p) != 0 {
		t.Fatalf("published events for waiting entries: %v", p)
	}
	w, err := GetWaiting(ctx, cf.conn, testTenant, top)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(w.Missing, []string{left, right}) || w.Narinfo == "" {
		t.Fatalf("top waits for %v, want left and right", w.Missing)
	}
	if w, err := GetWaiting(ctx, cf.conn, testTenant, right); err != nil || !slices.Equal(w.Missing, []string{dep}) {
		t.Fatalf("right waits for %v (%v), want dep", w, err)
	}

	cf.process(t, rDep, dDep)
	got := cf.order.visible()
	pos := map[string]int{}
	for i, k := range got {
		pos[k] = i
	}
	if len(got) != 4 {
		t.Fatalf("visible after dep: %v", got)
	}
	for _, e := range [][2]string{{dep, left}, {dep, right}, {left, top}, {right, top}} {
		if pos[cachelayout.NarinfoKey(e[0])] > pos[cachelayout.NarinfoKey(e[1])] {
			t.Fatalf("%s visible before %s: %v", e[1], e[0], got)
		}
	}
	for _, p := range []string{dep, left, right, top} {
		if _, err := GetWaiting(ctx, cf.conn, testTenant, p); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("%s still waits: %v", p, err)
		}
	}
	// Nothing but the marker-free, empty bucket is left.
	if m, err := cf.conn.KVList(ctx, queue.BucketWaiting, ""); err != nil || len(m) != 0 {
		t.Fatalf("waiting bucket after release: %v %v", keysOf(m), err)
	}
	// The published narinfo is the one signed at decision time.
	b, _ := store.ReadAll(ctx, cf.store, cachelayout.NarinfoKey(top), 1<<20)
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil || len(ni.References) != 3 || len(ni.Signatures) != 1 || !cf.cachePub.Verify(ni.Fingerprint(), ni.Signatures[0]) {
		t.Fatalf("top's narinfo: %v\n%s", err, b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(cf.eventPaths(queue.EventPublished)) < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ev := cf.eventPaths(queue.EventPublished); len(ev) != 4 || ev[0] != dep || ev[3] != top {
		t.Fatalf("published events %v", ev)
	}
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestClosureIncomplete: a reference that never arrives keeps the entry
// invisible; after the policy's timeout one "incomplete" event (from a
// group of two pushers) lists what is missing, and the record says so.
func TestClosureIncomplete(t *testing.T) {
	cf := newClosureFixture(t, "closure: {timeout: 300ms}\n", 1, nil)
	ctx := testctx.New(t, 60*time.Second)
	never, orphan := storePath("never"), storePath("orphan")
	r, d := cf.result(t, drvResult{name: "orphan", refs: []string{never}})
	cf.process(t, r, d)
	second, err := New(cf.cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, pu := range []*Pusher{cf.pusher, second} {
		if err := pu.Open(ctx, cf.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant)}); err != nil {
			t.Fatal(err)
		}
		defer pu.Close(ctx)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(cf.eventPaths(EventIncomplete)) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // more sweeps of both pushers
	if ev := cf.eventPaths(EventIncomplete); len(ev) != 1 || ev[0] != orphan {
		t.Fatalf("incomplete events: %v, want one for %s", ev, orphan)
	}
	cf.mu.Lock()
	var inc Incomplete
	for _, m := range cf.events {
		if strings.HasSuffix(m.Subject, "."+EventIncomplete) {
			json.Unmarshal(m.Data, &inc)
		}
	}
	cf.mu.Unlock()
	if !slices.Equal(inc.Missing, []string{never}) || inc.Tenant != testTenant || time.Since(inc.Since) < 300*time.Millisecond {
		t.Fatalf("incomplete event %+v", inc)
	}
	if cf.isVisible(t, orphan) {
		t.Fatal("an incomplete entry became visible")
	}
	w, err := GetWaiting(ctx, cf.conn, testTenant, orphan)
	if err != nil || w.Incomplete == nil || !slices.Equal(w.Missing, []string{never}) {
		t.Fatalf("waiting record %+v, %v", w, err)
	}
}

// TestClosureSweepAfterCrash: a pusher that died between publishing a
// path and releasing what waits for it leaves a visible path and waiting
// dependents; the next pusher's sweeper publishes them at Open.
func TestClosureSweepAfterCrash(t *testing.T) {
	cf := newClosureFixture(t, "", 1, nil)
	ctx := testctx.New(t, 60*time.Second)
	dep, mid, top := storePath("dep"), storePath("mid"), storePath("top")
	rTop, dTop := cf.result(t, drvResult{name: "top", refs: []string{mid}})
	rMid, dMid := cf.result(t, drvResult{name: "mid", refs: []string{dep}})
	cf.process(t, rTop, dTop)
	cf.process(t, rMid, dMid)
	// The dependency becomes visible behind the pusher's back, as when
	// the pusher that wrote it was killed before releasing its waiters.
	rDep, dDep := cf.result(t, drvResult{name: "dep"})
	noRelease := cf.cfg
	noRelease.KV = &failingKV{KV: cf.conn}
	dying, err := New(noRelease)
	if err != nil {
		t.Fatal(err)
	}
	if err := dying.Process(ctx, subject(rDep), dDep, rDep.MsgID()); err != nil {
		t.Fatal(err)
	}
	if !cf.isVisible(t, dep) || cf.isVisible(t, mid) || cf.isVisible(t, top) {
		t.Fatalf("before the sweep: dep %v mid %v top %v", cf.isVisible(t, dep), cf.isVisible(t, mid), cf.isVisible(t, top))
	}
	if err := cf.pusher.Open(ctx, cf.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant)}); err != nil {
		t.Fatal(err)
	}
	defer cf.pusher.Close(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for len(cf.order.visible()) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := cf.order.visible(); !slices.Equal(got, []string{cachelayout.NarinfoKey(dep), cachelayout.NarinfoKey(mid), cachelayout.NarinfoKey(top)}) {
		t.Fatalf("visible order %v", got)
	}
}

// failingKV fails every call on the waiting bucket: a pusher using it
// publishes a path without a waiting entry but cannot release waiters.
type failingKV struct{ KV }

var errKVDown = errors.New("kv down (test)")

func (k *failingKV) KVGet(ctx context.Context, bucket, key string) ([]byte, error) {
	if bucket == queue.BucketWaiting {
		if strings.HasPrefix(key, queue.WaitingPrefix+".") {
			return nil, queue.ErrNotFound
		}
		return nil, errKVDown
	}
	return k.KV.KVGet(ctx, bucket, key)
}

// TestClosureQuorum: with a quorum of two, each path is voted on alone;
// a dependent that reaches its quorum before its dependency waits, and
// becomes visible only after the dependency reaches its own.
func TestClosureQuorum(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 2, nil)
	dep, top := storePath("dep"), storePath("top")
	for _, b := range []string{"b0", "b1"} {
		r, d := cf.result(t, drvResult{name: "top", builder: b, refs: []string{dep}})
		cf.process(t, r, d)
	}
	if cf.isVisible(t, top) {
		t.Fatal("top visible before dep")
	}
	if w, err := GetWaiting(testctx.New(t, 60*time.Second), cf.conn, testTenant, top); err != nil || len(w.Missing) != 1 {
		t.Fatalf("top agreed but not waiting: %v %v", w, err)
	}
	r, d := cf.result(t, drvResult{name: "dep", builder: "b0"})
	cf.process(t, r, d)
	if cf.isVisible(t, dep) || cf.isVisible(t, top) {
		t.Fatal("visible on one vote of two")
	}
	r, d = cf.result(t, drvResult{name: "dep", builder: "b1"})
	cf.process(t, r, d)
	if got := cf.order.visible(); !slices.Equal(got, []string{cachelayout.NarinfoKey(dep), cachelayout.NarinfoKey(top)}) {
		t.Fatalf("visible order %v", got)
	}
	b, _ := store.ReadAll(testctx.New(t, 60*time.Second), cf.store, cachelayout.ProvenanceKey(top), 1<<20)
	prov, err := cachelayout.ParseProvenance(b)
	if err != nil || len(prov.Bundles) != 2 || prov.Quorum == nil || len(prov.Quorum.Agreeing) != 2 {
		t.Fatalf("top's sidecar: %+v %v", prov, err)
	}
}

// TestClosureSources: a result's content-addressed sources (recursive,
// flat, text with a reference) are published without a quorum after
// their address checks out, with their CA field; the output referring to
// them is visible at once. A source with a wrong address is refused.
func TestClosureSources(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 2, nil)
	ctx := testctx.New(t, 60*time.Second)
	tree := cf.source(t, "busybox", narOf(t, "tree"), contentaddr.Recursive, nil, nil)
	flatContent := "fixed bytes\n"
	flat := cf.source(t, "fixed.txt", fileNAR(t, flatContent, false), contentaddr.Flat, []byte(flatContent), nil)
	textContent := "greeting referring to " + tree.Path
	text := cf.source(t, "greeting.txt", fileNAR(t, textContent, false), contentaddr.Text, []byte(textContent), []string{tree.Path})
	// One builder, quorum two: the output waits for votes, the sources
	// do not.
	r, d := cf.result(t, drvResult{name: "uses", refs: []string{tree.Path, text.Path, flat.Path}, sources: []queue.Output{text, tree, flat}})
	cf.process(t, r, d)
	for _, s := range []queue.Output{tree, flat, text} {
		b, err := store.ReadAll(ctx, cf.store, cachelayout.NarinfoKey(s.Path), 1<<20)
		if err != nil {
			t.Fatalf("source %s not published: %v", s.Path, err)
		}
		ni, err := narinfo.Parse(bytes.NewReader(b))
		if err != nil || ni.CA != s.CA || !cf.cachePub.Verify(ni.Fingerprint(), ni.Signatures[0]) {
			t.Fatalf("source narinfo %v:\n%s", err, b)
		}
		// Its summary claims its content address, and no build level:
		// no builder attested it.
		v := cf.checkVSA(t, cf.pusher, s.Path)
		if !slices.Equal(v.VerifiedLevels, []string{vsa.ContentAddressed}) || len(v.InputAttestations) != 0 {
			t.Fatalf("VSA of source %s: levels %v, inputs %v", s.Path, v.VerifiedLevels, v.InputAttestations)
		}
	}
	if cf.isVisible(t, storePath("uses")) {
		t.Fatal("output visible on one vote of two")
	}
	// The second vote: visible, its references already are.
	r2, d2 := cf.result(t, drvResult{name: "uses", builder: "b1", refs: []string{tree.Path, text.Path, flat.Path}})
	cf.process(t, r2, d2)
	if !cf.isVisible(t, storePath("uses")) {
		t.Fatal("output not visible after its quorum")
	}
	// Two builders agreed: both bundles are the summary's inputs.
	if v := cf.checkVSA(t, cf.pusher, storePath("uses")); len(v.InputAttestations) != 2 || !slices.Equal(v.VerifiedLevels, []string{vsa.BuildLevel2}) {
		t.Fatalf("VSA of the output: levels %v, inputs %v", v.VerifiedLevels, v.InputAttestations)
	}

	bad := func(name string, mut func(o *queue.Output)) {
		t.Run(name, func(t *testing.T) {
			c := "bad " + name
			s := cf.source(t, "bad-"+name, fileNAR(t, c, false), contentaddr.Flat, []byte(c), nil)
			mut(&s)
			r, d := cf.result(t, drvResult{name: "bad-user-" + name, sources: []queue.Output{s}})
			err := cf.pusher.Process(ctx, subject(r), d, r.MsgID())
			if !errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), ReasonContentAddress) {
				t.Fatalf("Process = %v, want a %s rejection", err, ReasonContentAddress)
			}
			if cf.isVisible(t, s.Path) {
				t.Fatal("bad source published")
			}
		})
	}
	bad("other-hash", func(o *queue.Output) {
		c, _ := contentaddr.Parse(o.CA)
		c.Hash[3] ^= 1
		o.CA = c.String()
	})
	bad("other-path", func(o *queue.Output) { o.Path = storePath("bad-other-path") })
	bad("undeclared-reference", func(o *queue.Output) { o.References = []string{tree.Path} })
	bad("sha1", func(o *queue.Output) { o.CA = "fixed:sha1:0000000000000000000000000000000000000000" })
	bad("recursive-but-flat-nar", func(o *queue.Output) {
		// Right path for a recursive address over a different NAR.
		c, _ := contentaddr.Parse(o.CA)
		c.Method = contentaddr.Recursive
		o.CA = c.String()
		o.Path, _ = c.StorePath(storepath.Dir, "bad-recursive-but-flat-nar", nil, false)
	})
	t.Run("flat-address-of-a-directory", func(t *testing.T) {
		n := narOf(t, "dir")
		c := contentaddr.CA{Method: contentaddr.Flat, Hash: sha256.Sum256(n)}
		p, _ := c.StorePath(storepath.Dir, "dir", nil, false)
		h := sha256.Sum256(n)
		s := queue.Output{Name: "source", Path: p, NarHash: hexOf(h[:]), NarSize: uint64(len(n)), StagingKey: queue.StagingKey(hexOf(h[:])), CA: c.String()}
		cf.conn.Stage(ctx, s.StagingKey, bytes.NewReader(n))
		r, d := cf.result(t, drvResult{name: "dir-user", sources: []queue.Output{s}})
		nars := len(cf.keys(t, "nar/"))
		err := cf.pusher.Process(ctx, subject(r), d, r.MsgID())
		if !errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), ReasonContentAddress) {
			t.Fatalf("Process = %v", err)
		}
		if cf.isVisible(t, p) || len(cf.keys(t, "nar/")) != nars {
			t.Fatalf("directory NAR under a flat address stored: %v", cf.keys(t, "nar/"))
		}
	})
}

// TestClosureFixedOutput: a fixed-output derivation's output needs one
// trusted builder's result, even under a quorum, once its address (the
// derivation's outputHash) checks out; a wrong one is refused.
func TestClosureFixedOutput(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 2, nil)
	content := "downloaded tarball"
	n := fileNAR(t, content, false)
	c := contentaddr.CA{Method: contentaddr.Flat, Hash: sha256.Sum256([]byte(content))}
	p, _ := c.StorePath(storepath.Dir, "src.tar", nil, false)
	r, d := cf.result(t, drvResult{name: "src.tar", path: p, nar: n, ca: c.String()})
	cf.process(t, r, d)
	if !cf.isVisible(t, p) {
		t.Fatal("fixed output not visible on one trusted builder's result")
	}
	n2 := fileNAR(t, content+"!", false)
	r, d = cf.result(t, drvResult{name: "evil.tar", path: mustPath(t, c, "evil.tar"), nar: n2, ca: c.String()})
	err := cf.pusher.Process(testctx.New(t, 60*time.Second), subject(r), d, r.MsgID())
	if !errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), ReasonContentAddress) {
		t.Fatalf("fixed output with other content: %v", err)
	}

	// A trusted builder that labels an input-addressed output with a
	// content address (its NAR's, true as far as it goes) to skip the
	// quorum is refused: the path is not the one the address computes.
	ia := storePath("needs-quorum")
	n3 := narOf(t, "needs-quorum")
	r, d = cf.result(t, drvResult{name: "needs-quorum", nar: n3,
		ca: contentaddr.CA{Method: contentaddr.Recursive, Hash: sha256.Sum256(n3)}.String()})
	err = cf.pusher.Process(testctx.New(t, 60*time.Second), subject(r), d, r.MsgID())
	if !errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), ReasonContentAddress) || cf.isVisible(t, ia) {
		t.Fatalf("input-addressed output claimed as content-addressed: %v (visible %v)", err, cf.isVisible(t, ia))
	}
}

func mustPath(t *testing.T, c contentaddr.CA, name string) string {
	p, err := c.StorePath(storepath.Dir, name, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClosureUpstream: a second Provenix cache, declared in the policy
// with its key, serves a dependency: the dependent is published at once.
// Not declared, the dependent waits.
func TestClosureUpstream(t *testing.T) {
	// The upstream: another pusher and its cache, served over HTTP.
	up := newClosureFixture(t, "", 1, nil)
	rDep, dDep := up.result(t, drvResult{name: "updep"})
	up.process(t, rDep, dDep)
	srv := httptest.NewServer(server.Handler(up.store, server.Options{}))
	defer srv.Close()
	client, err := cacheclient.New(cacheclient.Options{URL: srv.URL, PublicKeys: []string{up.cachePub.String()}, HTTP: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Narinfo(testctx.New(t, 60*time.Second), storePath("updep")); err != nil {
		t.Fatalf("upstream serves its dependency: %v", err)
	}
	if _, err := client.Narinfo(testctx.New(t, 60*time.Second), storePath("nope")); !errors.Is(err, cacheclient.ErrNotFound) {
		t.Fatalf("absent path: %v", err)
	}
	// An upstream without keys would be trusted unchecked: refused.
	if _, err := UpstreamsFor(&policy.Policy{Upstreams: []policy.Upstream{{URL: srv.URL}}}, nil); err == nil {
		t.Fatal("UpstreamsFor accepted an upstream without public keys")
	}

	t.Run("declared", func(t *testing.T) {
		extra := "upstreams:\n  - {url: \"" + srv.URL + "\", public_keys: [\"" + up.cachePub.String() + "\"]}\n"
		var cf *closureFixture
		cf = newClosureFixture(t, extra, 1, func(c *Config) {
			ups, err := UpstreamsFor(c.Policy, srv.Client())
			if err != nil {
				t.Fatal(err)
			}
			c.Upstreams = ups
		})
		r, d := cf.result(t, drvResult{name: "down", refs: []string{storePath("updep")}})
		cf.process(t, r, d)
		if !cf.isVisible(t, storePath("down")) {
			t.Fatal("dependent of an upstream path not published")
		}
	})
	t.Run("wrong-key", func(t *testing.T) {
		other, _ := GenerateKeyFiles("other-1", filepath.Join(t.TempDir(), "k"))
		cf := newClosureFixture(t, "", 1, func(c *Config) {
			u, err := cacheclient.New(cacheclient.Options{URL: srv.URL, PublicKeys: []string{other.String()}, HTTP: srv.Client()})
			if err != nil {
				t.Fatal(err)
			}
			c.Upstreams = []Upstream{u}
		})
		r, d := cf.result(t, drvResult{name: "down", refs: []string{storePath("updep")}})
		cf.process(t, r, d)
		if cf.isVisible(t, storePath("down")) {
			t.Fatal("published on an upstream signed by an unknown key")
		}
	})
	t.Run("not-declared", func(t *testing.T) {
		cf := newClosureFixture(t, "", 1, nil)
		r, d := cf.result(t, drvResult{name: "down", refs: []string{storePath("updep")}})
		cf.process(t, r, d)
		if cf.isVisible(t, storePath("down")) {
			t.Fatal("published without its dependency nor a declared upstream")
		}
		if w, err := GetWaiting(testctx.New(t, 60*time.Second), cf.conn, testTenant, storePath("down")); err != nil || !slices.Equal(w.Missing, []string{storePath("updep")}) {
			t.Fatalf("waiting %+v %v", w, err)
		}
	})
}

// vanishStore deletes the narinfo of vanish right after the narinfo of
// when is committed: a `cache gc` collecting a reference between the
// pusher's check and its write.
type vanishStore struct {
	store.Store
	when, vanish string
}

func (v *vanishStore) Create(ctx context.Context) (store.Pending, error) {
	p, err := v.Store.Create(ctx)
	if err != nil {
		return nil, err
	}
	return &vanishPending{Pending: p, v: v}, nil
}

type vanishPending struct {
	store.Pending
	v *vanishStore
}

func (p *vanishPending) Commit(ctx context.Context, key string) error {
	if err := p.Pending.Commit(ctx, key); err != nil {
		return err
	}
	if key == cachelayout.NarinfoKey(p.v.when) {
		return p.v.Store.Delete(ctx, cachelayout.NarinfoKey(p.v.vanish))
	}
	return nil
}

// TestClosureReferenceVanishes: when a reference disappears while the
// pusher writes a narinfo (a concurrent cache gc), the narinfo is
// withdrawn and the entry waits for the reference again.
func TestClosureReferenceVanishes(t *testing.T) {
	dep, top := storePath("dep"), storePath("top")
	cf := newClosureFixture(t, "", 1, func(c *Config) { c.Store = &vanishStore{Store: c.Store, when: top, vanish: dep} })
	r, d := cf.result(t, drvResult{name: "dep"})
	cf.process(t, r, d)
	r, d = cf.result(t, drvResult{name: "top", refs: []string{dep}})
	cf.process(t, r, d)
	if cf.isVisible(t, top) || cf.isVisible(t, dep) {
		t.Fatalf("top visible %v, dep visible %v", cf.isVisible(t, top), cf.isVisible(t, dep))
	}
	w, err := GetWaiting(testctx.New(t, 60*time.Second), cf.conn, testTenant, top)
	if err != nil || !slices.Equal(w.Missing, []string{dep}) {
		t.Fatalf("top after its reference vanished: %+v %v", w, err)
	}
}

// slowStore delays the commit of one key.
type slowStore struct {
	store.Store
	key   string
	delay time.Duration
}

func (s *slowStore) Create(ctx context.Context) (store.Pending, error) {
	p, err := s.Store.Create(ctx)
	if err != nil {
		return nil, err
	}
	return &slowPending{Pending: p, s: s}, nil
}

type slowPending struct {
	store.Pending
	s *slowStore
}

func (p *slowPending) Commit(ctx context.Context, key string) error {
	if key == p.s.key {
		time.Sleep(p.s.delay)
	}
	return p.Pending.Commit(ctx, key)
}

// TestClosureInFlight: a dependent arriving while this pusher still
// writes its reference waits for it in memory, and is published right
// after it, without a durable waiting entry.
func TestClosureInFlight(t *testing.T) {
	dep, top := storePath("dep"), storePath("top")
	m := metrics.NewPusher(prometheus.NewRegistry())
	cf := newClosureFixture(t, "", 1, func(c *Config) {
		c.Metrics = m
		c.Store = &slowStore{Store: c.Store, key: cachelayout.NarinfoKey(dep), delay: 300 * time.Millisecond}
	})
	rDep, dDep := cf.result(t, drvResult{name: "dep"})
	rTop, dTop := cf.result(t, drvResult{name: "top", refs: []string{dep}})
	errc := make(chan error, 1)
	go func() { errc <- cf.pusher.Process(testctx.New(t, 60*time.Second), subject(rDep), dDep, rDep.MsgID()) }()
	for {
		cf.pusher.flightMu.Lock()
		_, ok := cf.pusher.inFlight[dep]
		cf.pusher.flightMu.Unlock()
		if ok {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cf.process(t, rTop, dTop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := cf.order.visible(); !slices.Equal(got, []string{cachelayout.NarinfoKey(dep), cachelayout.NarinfoKey(top)}) {
		t.Fatalf("visible %v", got)
	}
	if w := m.Status().Waited; w != 0 {
		t.Fatalf("%d durable waits, want none", w)
	}
}

// TestClosureMultiOutput: a derivation whose "dev" output refers to its
// "out", listed dev first, publishes both at once, out first.
func TestClosureMultiOutput(t *testing.T) {
	m := metrics.NewPusher(prometheus.NewRegistry())
	cf := newClosureFixture(t, "", 1, func(c *Config) { c.Metrics = m })
	ctx := testctx.New(t, 60*time.Second)
	outPath, devPath := storePath("multi"), storePath("multi-dev")
	outNAR, devNAR := narOf(t, "multi out"), narOf(t, "multi dev")
	outs := []attest.Output{
		{Name: "dev", Path: devPath, NarHash: sha256.Sum256(devNAR), NarSize: uint64(len(devNAR)), References: []string{outPath}},
		{Name: "out", Path: outPath, NarHash: sha256.Sum256(outNAR), NarSize: uint64(len(outNAR))},
	}
	drv := storePath("multi.drv")
	st, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: "x86_64-linux", BuilderID: "b0",
		Installable: attest.Installable{Kind: "drv", Ref: drv}, Outputs: outs})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attest.Sign(ctx, st, cf.signers["b0"])
	if err != nil {
		t.Fatal(err)
	}
	r := &queue.Result{Version: queue.ResultVersion, Tenant: testTenant, Builder: "b0", DrvPath: drv, System: "x86_64-linux", Bundle: bundle}
	for i, o := range outs {
		key := queue.StagingKey(o.NarHashHex())
		if _, err := cf.conn.Stage(ctx, key, bytes.NewReader([][]byte{devNAR, outNAR}[i])); err != nil {
			t.Fatal(err)
		}
		r.Outputs = append(r.Outputs, queue.Output{Name: o.Name, Path: o.Path, NarHash: o.NarHashHex(), NarSize: o.NarSize, StagingKey: key, References: o.References})
	}
	data, _ := json.Marshal(r)
	start := time.Now()
	cf.process(t, r, data)
	if got := cf.order.visible(); !slices.Equal(got, []string{cachelayout.NarinfoKey(outPath), cachelayout.NarinfoKey(devPath)}) {
		t.Fatalf("visible %v", got)
	}
	if w := m.Status().Waited; w != 0 || time.Since(start) > 3*time.Second {
		t.Fatalf("%d durable waits, %s", w, time.Since(start))
	}
}

// countingUpstream counts look-ups and has the paths in has.
type countingUpstream struct {
	mu    sync.Mutex
	asked map[string]int
	has   map[string]bool
}

func (u *countingUpstream) Narinfo(_ context.Context, storePath string) (*narinfo.NarInfo, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.asked[storePath]++
	if u.has[storePath] {
		return &narinfo.NarInfo{StorePath: storePath}, nil
	}
	return nil, cacheclient.ErrNotFound
}

// TestUpstreamAnswersRemembered: an upstream's "found" is remembered
// longer than its "not found".
func TestUpstreamAnswersRemembered(t *testing.T) {
	there, absent := storePath("there"), storePath("absent")
	u := &countingUpstream{asked: map[string]int{}, has: map[string]bool{there: true}}
	cf := newClosureFixture(t, "", 1, func(c *Config) {
		c.Upstreams = []Upstream{u}
		c.UpstreamFound, c.UpstreamMissing = time.Hour, 100*time.Millisecond
	})
	ctx := testctx.New(t, 60*time.Second)
	for range 3 {
		if ok, err := cf.pusher.visible(ctx, there); !ok || err != nil {
			t.Fatal(ok, err)
		}
		if ok, err := cf.pusher.visible(ctx, absent); ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	time.Sleep(150 * time.Millisecond)
	cf.pusher.visible(ctx, there)
	cf.pusher.visible(ctx, absent)
	if u.asked[there] != 1 || u.asked[absent] != 2 {
		t.Fatalf("asked %v: want the found path once, the missing one again after its time", u.asked)
	}
}

// TestReferenceByHashPartOnly: a source referring to a path that has the
// hash part of a published path and another name is not published: the
// narinfo under that hash names another path, which a client would
// refuse, so the reference is not there.
func TestReferenceByHashPartOnly(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 1}\n", 1, nil)
	r, d := cf.result(t, drvResult{name: "real"})
	cf.process(t, r, d)
	real := storePath("real")
	fake := strings.TrimSuffix(real, "real") + "fake"
	content := "refers to " + fake
	s := cf.source(t, "junk.txt", fileNAR(t, content, false), contentaddr.Text, []byte(content), []string{fake})
	r, d = cf.result(t, drvResult{name: "other", sources: []queue.Output{s}})
	cf.process(t, r, d)
	if !cf.isVisible(t, real) {
		t.Fatal("the real path is not published")
	}
	if cf.isVisible(t, s.Path) {
		t.Fatalf("%s published with reference %s, which is not in the cache (%s is)", s.Path, fake, real)
	}
}

// TestCAPathNonCanonicalNAR: a content-addressed path's NAR must be the
// one Nix makes. A fixed output's NAR with bytes after its end (which a
// client, reading the NAR only, would find the wrong hash for) and a
// text source marked executable (which Nix never makes) are refused,
// and do not keep the honest builder's NAR out.
func TestCAPathNonCanonicalNAR(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2}\n", 2, nil)
	ctx := testctx.New(t, 60*time.Second)
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), ReasonContentAddress) {
			t.Fatalf("%s: %v, want a %s rejection", what, err, ReasonContentAddress)
		}
	}

	content := "downloaded tarball"
	good := fileNAR(t, content, false)
	c := contentaddr.CA{Method: contentaddr.Flat, Hash: sha256.Sum256([]byte(content))}
	p := mustPath(t, c, "src.tar")
	r, d := cf.result(t, drvResult{name: "src.tar", path: p, nar: append(slices.Clone(good), make([]byte, 8)...), ca: c.String(), builder: "b0"})
	refused("a fixed output's NAR with bytes after its end", cf.pusher.Process(ctx, subject(r), d, r.MsgID()))
	r, d = cf.result(t, drvResult{name: "src.tar", path: p, nar: good, ca: c.String(), builder: "b1"})
	cf.process(t, r, d)
	if !cf.isVisible(t, p) {
		t.Fatal("the honest fixed output is not published")
	}

	script := "builder script\n"
	exe := cf.source(t, "script.sh", fileNAR(t, script, true), contentaddr.Text, []byte(script), nil)
	r, d = cf.result(t, drvResult{name: "user1", builder: "b0", sources: []queue.Output{exe}})
	refused("an executable text source", cf.pusher.Process(ctx, subject(r), d, r.MsgID()))
	src := cf.source(t, "script.sh", fileNAR(t, script, false), contentaddr.Text, []byte(script), nil)
	r, d = cf.result(t, drvResult{name: "user2", builder: "b1", sources: []queue.Output{src}})
	cf.process(t, r, d)
	if !cf.isVisible(t, src.Path) {
		t.Fatal("the honest text source is not published")
	}
}

// TestLateAgreementEarnsNothing: a builder that votes on paths already
// decided (it can copy their NAR hash, size and references from the
// narinfos, building nothing) earns no agreement from it, so it does not
// become a veteran whose vote alone publishes (trusted_after); the
// builders that decided earn theirs.
func TestLateAgreementEarnsNothing(t *testing.T) {
	cf := newClosureFixture(t, "quorum: {min: 2, trusted_after: 3}\n", 3, nil)
	ctx := testctx.New(t, 30*time.Second)
	for _, name := range []string{"decided-a", "decided-b", "decided-c"} {
		for _, b := range []string{"b0", "b1", "b2"} {
			r, d := cf.result(t, drvResult{name: name, builder: b})
			cf.process(t, r, d)
		}
		if !cf.isVisible(t, storePath(name)) {
			t.Fatalf("%s not published", name)
		}
	}
	for b, want := range map[string]int{"b0": 3, "b1": 3, "b2": 0} {
		rep, err := GetReputation(ctx, cf.fixture.conn, b)
		if errors.Is(err, ErrNoReputation) {
			rep, err = &Reputation{}, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		if rep.Agreements != want {
			t.Errorf("%s: %d agreements, want %d", b, rep.Agreements, want)
		}
	}
	// A relay of a deciding vote keeps its time: with a new one, it
	// would sort after a late vote, which would earn its agreement.
	before, err := cf.conn.KVGet(ctx, queue.BucketVotes, queue.VoteKey(testTenant, storePath("decided-a"), "b1"))
	if err != nil {
		t.Fatal(err)
	}
	r, d := cf.result(t, drvResult{name: "decided-a", builder: "b1"})
	if err := cf.pusher.Process(ctx, subject(r), d, "relayed"); err != nil {
		t.Fatal(err)
	}
	after, err := cf.conn.KVGet(ctx, queue.BucketVotes, queue.VoteKey(testTenant, storePath("decided-a"), "b1"))
	if err != nil {
		t.Fatal(err)
	}
	var v0, v1 Vote
	json.Unmarshal(before, &v0)
	json.Unmarshal(after, &v1)
	if !v1.Time.Equal(v0.Time) {
		t.Fatalf("a relayed vote's time went from %s to %s", v0.Time, v1.Time)
	}

	// b2 alone on a path of its own: its vote needs a second one.
	p2, err := New(cf.cfg) // no reputation cached
	if err != nil {
		t.Fatal(err)
	}
	cf.pusher = p2
	r, d = cf.result(t, drvResult{name: "alone", builder: "b2", nar: narOf(t, "backdoored")})
	cf.process(t, r, d)
	if cf.isVisible(t, storePath("alone")) {
		t.Fatal("published on the vote of a builder whose record is only late agreements")
	}
}

// TestWaitersBounded: the list of entries waiting for one reference is
// one KV value. Filled (by anyone who may publish results: one staged
// text NAR under thousands of names, all referring to a path not yet
// published) to just under the server's message size, it does not make
// an honest entry waiting for the same reference fail: past maxWaiters
// the entry is not indexed, and the sweep publishes it once the
// reference is.
func TestWaitersBounded(t *testing.T) {
	cf := newClosureFixture(t, "", 1, nil)
	ctx := testctx.New(t, time.Minute)
	dep, mid := storePath("dep"), storePath("mid")
	// Paths of 211 bytes, and one shorter: 100 bytes under 1 MiB, which
	// one more path (and an update's header) goes over.
	const size = 1<<20 - 100
	var junk []string
	n := 1 // "[" and "]", less the first entry's comma
	for i := 0; n < size-300; i++ {
		junk = append(junk, storePath(fmt.Sprintf("%0168d", i)))
		n += len(junk[i]) + 3 // quoted, and a comma
	}
	junk = append(junk, storePath(strings.Repeat("x", size-n-len(storePath(""))-3)))
	b, _ := json.Marshal(junk)
	if len(b) != size {
		t.Fatalf("the list is %d bytes, want %d", len(b), size)
	}
	if err := cf.conn.KVPut(ctx, queue.BucketWaiting, queue.WaitersKey(testTenant, dep), b); err != nil {
		t.Fatal(err)
	}
	rMid, dMid := cf.result(t, drvResult{name: "mid", refs: []string{dep}})
	if err := cf.pusher.Process(ctx, subject(rMid), dMid, rMid.MsgID()); err != nil {
		t.Fatalf("an honest entry waiting for a reference with a full waiters list: %v", err)
	}
	// The list holds junk only (mid is not in it): gone, so that
	// publishing dep does not read 4,000 waiting records for nothing;
	// mid is the sweeper's.
	if err := cf.conn.KVDelete(ctx, queue.BucketWaiting, queue.WaitersKey(testTenant, dep)); err != nil {
		t.Fatal(err)
	}
	rDep, dDep := cf.result(t, drvResult{name: "dep"})
	cf.process(t, rDep, dDep)
	if _, err := cf.pusher.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if !cf.isVisible(t, dep) || !cf.isVisible(t, mid) {
		t.Fatalf("after the sweep: dep %v mid %v", cf.isVisible(t, dep), cf.isVisible(t, mid))
	}
}
