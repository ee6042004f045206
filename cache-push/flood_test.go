package cachepush

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/storepath"
)

const malloryID = "https://builders.example/mallory"

// badHashPath is a store path whose hash part holds a newline: attest's
// shape check lets it through, Nix and NATS keys do not.
var badHashPath = storepath.Dir + "/" + strings.Repeat("a", 31) + "\n-evil"

// floodFixture is a fixture whose policy trusts two builders, the honest
// testBuilder and mallory (one trusted key among several, as in issue
// 11's attack), with a quorum of 1 and quarantine after 3. staging wraps
// the real staging for fault injection.
type floodFixture struct {
	*fixture
	mallory *attest.Signer
	pol     *policy.Policy
	staging *faultyStaging
}

func newFloodFixture(t testing.TB, cfg func(*Config)) *floodFixture {
	t.Helper()
	f := newFixture(t)
	dir := t.TempDir()
	pub, err := attest.MarshalPublicKey(f.signer.GetPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := attest.WriteNewFile(filepath.Join(dir, "alice.pub"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	mallory, err := attest.GenerateKeyFiles(filepath.Join(dir, "mallory"))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse([]byte("tenants: ["+testTenant+"]\nsystems: [x86_64-linux]\nreputation: {quarantine_after: 3}\nbuilders:\n"+
		"  - {id: \""+testBuilder+"\", key: alice.pub, owner: alice}\n"+
		"  - {id: \""+malloryID+"\", key: mallory.pub, owner: mallory}\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	fs := &faultyStaging{Staging: f.conn}
	c := f.pusher.cfg
	c.Policy, c.Staging = pol, fs
	if cfg != nil {
		cfg(&c)
	}
	if f.pusher, err = New(c); err != nil {
		t.Fatal(err)
	}
	return &floodFixture{fixture: f, mallory: mallory, pol: pol, staging: fs}
}

// faultyStaging fails every open of a key starting with failPrefix with
// a retryable error, as a staging stream whose leader never answers for
// that object would: the one per-message failure no retry here fixes.
type faultyStaging struct {
	Staging
	failPrefix string
	// delay is how long a failing open takes (a read that stalls, then
	// fails): slow poison occupies handlers.
	delay time.Duration
	fails sync.Map // key → count
}

var errStagingStuck = errors.New("staging: no answer for this object (test fault)")

func (s *faultyStaging) OpenStaged(ctx context.Context, key string) (io.ReadCloser, queue.StagedInfo, error) {
	if s.failPrefix != "" && strings.HasPrefix(key, s.failPrefix) {
		n, _ := s.fails.LoadOrStore(key, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
		}
		return nil, queue.StagedInfo{}, fmt.Errorf("open %s: %w", key, errStagingStuck)
	}
	return s.Staging.OpenStaged(ctx, key)
}

// signed makes a result of builder for derivation name, signed by
// signer, whose NAR is staged under stagingKey (or nowhere). refs are
// signed references; the result carries them unless mutate says
// otherwise.
func signed(t testing.TB, signer *attest.Signer, builder, name, stagingKey string, refs []string, mutate func(*queue.Result)) (*queue.Result, []byte) {
	t.Helper()
	return signedNAR(t, signer, builder, name, stagingKey, sha256.Sum256([]byte(name)), 1234, refs, mutate)
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// signedNAR is signed for a NAR of the given hash and size.
func signedNAR(t testing.TB, signer *attest.Signer, builder, name, stagingKey string, h [32]byte, size uint64, refs []string, mutate func(*queue.Result)) (*queue.Result, []byte) {
	t.Helper()
	out := attest.Output{Name: "out", Path: storePath(name), NarHash: h, NarSize: size, References: refs}
	drv := storePath(name + ".drv")
	st, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: "x86_64-linux", BuilderID: builder,
		Installable: attest.Installable{Kind: "drv", Ref: drv}, Outputs: []attest.Output{out}})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attest.Sign(context.Background(), st, signer)
	if err != nil {
		t.Fatal(err)
	}
	r := &queue.Result{Version: queue.ResultVersion, Tenant: testTenant, Builder: builder, DrvPath: drv, System: "x86_64-linux",
		Outputs: []queue.Output{{Name: "out", Path: out.Path, NarHash: hex.EncodeToString(h[:]), NarSize: size, StagingKey: stagingKey, References: refs}},
		Bundle:  bundle}
	if mutate != nil {
		mutate(r)
	}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return r, data
}

// publishRaw publishes data as a result message, unvalidated, as a
// hostile publisher can.
func publishRaw(t testing.TB, c *queue.Conn, data []byte) {
	t.Helper()
	id := sha256.Sum256(data)
	m := nats.NewMsg("results." + testTenant + ".x86_64-linux")
	m.Data = data
	m.Header.Set(nats.MsgIdHdr, hex.EncodeToString(id[:]))
	if _, err := c.JetStream().PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// consumerIdle waits until group has nothing pending nor awaiting an ack.
func consumerIdle(t testing.TB, c *queue.Conn, group string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		cons, err := c.JetStream().Consumer(context.Background(), queue.StreamResults, queue.ConsumerPrefix+group)
		if err != nil {
			t.Fatal(err)
		}
		info, err := cons.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s: %d awaiting ack, %d pending after %s", group, info.NumAckPending, info.NumPending, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) countEvents(kind string, match func([]byte) bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, m := range f.events {
		if strings.HasSuffix(m.Subject, "."+kind) && (match == nil || match(m.Data)) {
			n++
		}
	}
	return n
}

// TestSignedMalformedCharged: malformed results that a trusted builder
// signed are terminated and counted against that builder, which is
// quarantined after the policy's quarantine_after; unsigned junk naming
// a builder, and a copy of its valid bundle in a bad result, are
// terminated without counting against it.
func TestSignedMalformedCharged(t *testing.T) {
	f := newFloodFixture(t, nil)
	ctx := testctx.New(t, 60*time.Second)
	if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant), Concurrency: 4}); err != nil {
		t.Fatal(err)
	}
	defer f.pusher.Close(ctx)

	// Not the builder's doing: junk naming it, its signature over another
	// payload, its valid bundle in a result with a bad staging key or
	// lying about the derivation.
	publishRaw(t, f.conn, []byte(`{"version":1,"tenant":"t1","builder":"`+testBuilder+`","drvPath":"`+badHashPath+`"}`))
	_, good := signed(t, f.signer, testBuilder, "junk-altered", "nar/x", []string{badHashPath}, func(r *queue.Result) {
		r.Bundle = alterPayload(t, r.Bundle, `"x86_64-linux"`, `"x86_64-darwin"`)
	})
	publishRaw(t, f.conn, good)
	_, relayed := signed(t, f.signer, testBuilder, "relayed", "nar/bad key", nil, nil)
	publishRaw(t, f.conn, relayed)
	_, lie := signed(t, f.signer, testBuilder, "lie", "nar/x", nil, func(r *queue.Result) { r.DrvPath = storePath("other.drv") })
	publishRaw(t, f.conn, lie)
	consumerIdle(t, f.conn, "g", 20*time.Second)
	if r, err := GetReputation(ctx, f.conn, testBuilder); err == nil && (r.Malformed != 0 || r.Quarantined) {
		t.Fatalf("unsigned or relayed junk counted against %s: %+v", testBuilder, r)
	}

	// Mallory signs statements with a reference whose hash part holds a
	// newline (attest's shape check passes it; the pusher's check after
	// verification does not), or that is no store path at all (attest
	// refuses it after verifying the signature). The result repeats the
	// reference (so it fails to decode) or leaves it out.
	const flood = 12
	for i := range flood {
		ref := badHashPath
		if i%4 >= 2 {
			ref = "not/a/store/path"
		}
		_, data := signed(t, f.mallory, malloryID, fmt.Sprintf("poison-%d", i), "nar/p", []string{ref}, func(r *queue.Result) {
			if i%2 == 1 {
				r.Outputs[0].References = nil
			}
		})
		publishRaw(t, f.conn, data)
	}
	consumerIdle(t, f.conn, "g", 30*time.Second)
	rep, err := GetReputation(ctx, f.conn, malloryID)
	if err != nil {
		t.Fatalf("no reputation record for %s: %v", malloryID, err)
	}
	if rep.Malformed != flood || !rep.Quarantined || rep.QuarantinedAt == nil {
		t.Fatalf("after %d signed malformed results: malformed %d, quarantined %v", flood, rep.Malformed, rep.Quarantined)
	}
	charged := f.countEvents(queue.EventRejected, func(b []byte) bool {
		var rej Rejection
		return json.Unmarshal(b, &rej) == nil && rej.Reason == ReasonMalformed && rej.Builder == malloryID
	})
	if charged != flood {
		t.Fatalf("%d malformed rejections naming %s, want %d", charged, malloryID, flood)
	}
	cons, _ := f.conn.JetStream().Consumer(ctx, queue.StreamResults, queue.ConsumerPrefix+"g")
	if info, _ := cons.Info(ctx); info.NumRedelivered != 0 {
		t.Fatalf("%d redelivered: a malformed result was retried", info.NumRedelivered)
	}
	if n := f.keys(t, ""); len(n) != 0 {
		t.Fatalf("cache has %v", n)
	}
}

// TestDeadLetter: a result whose handling fails with a retryable error
// every time is given up after MaxFailures failures, with a dead-letter
// event, and terminated; the consumer is left with nothing pending.
func TestDeadLetter(t *testing.T) {
	f := newFloodFixture(t, func(c *Config) { c.MaxFailures = 3 })
	f.staging.failPrefix = "nar/stuck-"
	ctx := testctx.New(t, 60*time.Second)
	if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant), Concurrency: 2}); err != nil {
		t.Fatal(err)
	}
	defer f.pusher.Close(ctx)
	good, _ := f.result(t, spec{name: "good", content: "good"})
	if _, err := f.conn.PublishResult(ctx, good); err != nil {
		t.Fatal(err)
	}
	stuck, _ := signed(t, f.mallory, malloryID, "stuck", "nar/stuck-1", nil, nil)
	if _, err := f.conn.PublishResult(ctx, stuck); err != nil {
		t.Fatal(err)
	}
	consumerIdle(t, f.conn, "g", 30*time.Second)
	var dl []DeadLetter
	f.mu.Lock()
	for _, m := range f.events {
		if strings.HasSuffix(m.Subject, "."+EventDeadLetter) {
			var d DeadLetter
			if err := json.Unmarshal(m.Data, &d); err != nil {
				t.Fatal(err)
			}
			dl = append(dl, d)
		}
	}
	f.mu.Unlock()
	if len(dl) != 1 {
		t.Fatalf("%d dead-letter events, want 1", len(dl))
	}
	d := dl[0]
	if d.MsgID != stuck.MsgID() || d.Builder != malloryID || d.Subject != subject(stuck) || d.Failures != 3 || d.Deliveries < 3 ||
		!strings.Contains(d.Error, errStagingStuck.Error()) || d.Stream == 0 {
		t.Fatalf("dead letter %+v", d)
	}
	n, _ := f.staging.fails.Load("nar/stuck-1")
	if got := n.(*atomic.Int32).Load(); got != 3 {
		t.Fatalf("stuck result tried %d times, want 3", got)
	}
	f.checkEntry(t, good)
}

// TestOutageNotDeadLettered: failures every result shares (the cache
// store full) never dead-letter, nor do failures while nothing else gets
// through; a per-result failure does once others do.
func TestOutageNotDeadLettered(t *testing.T) {
	f := newFloodFixture(t, func(c *Config) { c.MaxFailures = 2 })
	ctx := testctx.New(t, 60*time.Second)
	full := &fullStore{Store: f.store}
	cfg := f.pusher.cfg
	cfg.Store = full
	pu, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, data := f.result(t, spec{name: "full", content: "full"})
	d := &queue.Delivery{Subject: subject(r), Data: data, MsgID: r.MsgID(), Stream: 7}
	for i := range 5 {
		full.full.Store(true)
		d.NumDelivered = uint64(i + 1)
		if err := pu.Handle(ctx, d); err == nil || errors.Is(err, queue.ErrPermanent) {
			t.Fatalf("delivery %d with the store full: %v, want a retryable error", i+1, err)
		}
	}
	// Another kind of failure, while nothing got through: still retried.
	f.staging.failPrefix = "nar/stuck-"
	_, sd := signed(t, f.mallory, malloryID, "stuck", "nar/stuck-1", nil, nil)
	sdel := &queue.Delivery{Subject: "results." + testTenant + ".x86_64-linux", Data: sd, Stream: 8}
	for i := range 3 {
		sdel.NumDelivered = uint64(i + 1)
		if err := pu.Handle(ctx, sdel); err == nil || errors.Is(err, queue.ErrPermanent) {
			t.Fatalf("stuck delivery %d while nothing gets through: %v", i+1, err)
		}
	}
	// Space freed: the first result goes through, and the stuck one is
	// now given up.
	full.full.Store(false)
	if err := pu.Handle(ctx, d); err != nil {
		t.Fatal(err)
	}
	sdel.NumDelivered++
	if err := pu.Handle(ctx, sdel); !errors.Is(err, ErrDeadLettered) || !errors.Is(err, queue.ErrPermanent) {
		t.Fatalf("stuck result once others get through: %v", err)
	}
}

// fullStore fails every write with store.ErrNoSpace while full is set.
type fullStore struct {
	store.Store
	full atomicBool
}

type atomicBool struct {
	mu sync.Mutex
	v  bool
}

func (b *atomicBool) Store(v bool) { b.mu.Lock(); b.v = v; b.mu.Unlock() }
func (b *atomicBool) Load() bool   { b.mu.Lock(); defer b.mu.Unlock(); return b.v }

func (s *fullStore) Create(ctx context.Context) (store.Pending, error) {
	if s.full.Load() {
		return nil, fmt.Errorf("create: %w", store.ErrNoSpace)
	}
	return s.Store.Create(ctx)
}

// TestUnfixableIsPermanent: errors no retry can fix (a staging key NATS
// refuses) end in a rejection, not in retries.
func TestUnfixableIsPermanent(t *testing.T) {
	f := newFloodFixture(t, nil)
	_, data := signed(t, f.mallory, malloryID, "bad-key", "nar/bad key", nil, nil)
	err := f.pusher.Process(testctx.New(t, 60*time.Second), "results."+testTenant+".x86_64-linux", data, "m")
	if !errors.Is(err, queue.ErrPermanent) || !errors.Is(err, queue.ErrInvalidName) || !strings.Contains(err.Error(), ReasonMalformed) {
		t.Fatalf("Process = %v, want a permanent malformed rejection", err)
	}
	f.waitEvent(t, queue.EventRejected, ReasonMalformed)
}

// TestFloodDoesNotStarve: while one trusted builder floods the pushers
// with 1,000 results that fail retryably every time, slowly (each holds
// its handler 100 ms), another builder's result is published within
// bounded time. On the old code the flood filled the consumer's 1,000
// acks pending and the honest result was never delivered; without the
// builder's share of handlers it waited behind the whole flood.
func TestFloodDoesNotStarve(t *testing.T) {
	f := newFloodFixture(t, nil)
	f.staging.failPrefix, f.staging.delay = "nar/poison-", 100*time.Millisecond
	ctx := testctx.New(t, 120*time.Second)
	const flood = 1000
	for i := range flood {
		r, _ := signed(t, f.mallory, malloryID, fmt.Sprintf("poison-%d", i), fmt.Sprintf("nar/poison-%d", i), nil, nil)
		if _, err := f.conn.PublishResult(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant), Concurrency: 4}); err != nil {
		t.Fatal(err)
	}
	defer f.pusher.Close(context.Background())
	// Let the flood take hold: poison results delivered and failed.
	deadline := time.Now().Add(40 * time.Second)
	for tried := 0; tried < 20; {
		tried = 0
		f.staging.fails.Range(func(_, _ any) bool { tried++; return true })
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d poison results tried", tried, flood)
		}
		time.Sleep(50 * time.Millisecond)
	}
	honest, _ := f.result(t, spec{name: "honest", content: "honest"})
	start := time.Now()
	if _, err := f.conn.PublishResult(ctx, honest); err != nil {
		t.Fatal(err)
	}
	// Under the race detector, with other packages' tests running beside
	// it, each deferral of the flood costs several times more and the
	// honest result waits behind their redeliveries longer (the server
	// hands out due redeliveries first). Starving, as the old code did,
	// is never delivered at all.
	bound := 15 * time.Second * raceSlowdown
	for {
		if _, err := f.store.Stat(ctx, cachelayout.NarinfoKey(honest.Outputs[0].Path)); err == nil {
			break
		}
		if time.Since(start) > bound {
			t.Fatalf("honest result not published %s into a flood of %d", bound, flood)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("honest result published %s into the flood", time.Since(start).Round(time.Millisecond))
	f.checkEntry(t, honest)
}

// TestErrorClasses: what is terminal, what is an outage, what is neither
// (retried, then dead-lettered). The KV error is a real one: a key with a
// newline, as the attack produced.
func TestErrorClasses(t *testing.T) {
	f := newFixture(t)
	_, kvErr := f.conn.KVGet(testctx.New(t, 60*time.Second), queue.BucketVotes, "t1.aaaa\n.b")
	if kvErr == nil {
		t.Fatal("KV accepted a key with a newline")
	}
	var syn error = json.Unmarshal([]byte("{"), new(any))
	for _, tc := range []struct {
		name             string
		err              error
		unfixable, outge bool
	}{
		{"nats invalid key", fmt.Errorf("record vote: %w", kvErr), true, false},
		{"invalid name", fmt.Errorf("open: %w", queue.ErrInvalidName), true, false},
		{"json", fmt.Errorf("vote: %w", syn), true, false},
		{"store key", store.ErrInvalidKey, true, false},
		{"store full", fmt.Errorf("put: %w", store.ErrNoSpace), false, true},
		{"jetstream full", queue.ErrStorageFull, false, true},
		{"connection closed", nats.ErrConnectionClosed, false, true},
		{"staging corrupt", queue.ErrCorrupt, false, false},
		{"timeout", context.DeadlineExceeded, false, false},
	} {
		if got := unfixable(tc.err); got != tc.unfixable {
			t.Errorf("%s: unfixable = %v", tc.name, got)
		}
		if got := outage(tc.err); got != tc.outge {
			t.Errorf("%s: outage = %v", tc.name, got)
		}
	}
}

// TestBuilderShare: a builder may use every handler until one of its
// results fails or is rejected; then it holds at most its share.
func TestBuilderShare(t *testing.T) {
	f := floodState{share: builderShare(4)}
	for i := range 4 {
		if !f.acquire("a") {
			t.Fatalf("handler %d refused to a builder in good standing", i+1)
		}
	}
	f.distrust("a")
	if f.acquire("a") {
		t.Fatal("a suspect builder holding 4 handlers got a fifth")
	}
	if !f.acquire("b") {
		t.Fatal("another builder refused")
	}
	for range 3 {
		f.release("a")
	}
	if !f.acquire("a") || f.acquire("a") {
		t.Fatal("a suspect builder's share is not 2 of 4")
	}
}

// TestRoutingBuilderOnce: Handle reads the builder that schedules a
// result from the result it decodes once, and gets the id routingBuilder
// reads from the raw message, decodable or not.
func TestRoutingBuilderOnce(t *testing.T) {
	signer, err := attest.GenerateKeyFiles(filepath.Join(t.TempDir(), "builder"))
	if err != nil {
		t.Fatal(err)
	}
	_, valid := signed(t, signer, testBuilder, "routing", "nar/x", nil, nil)
	long := strings.Repeat("b", 300)
	for name, data := range map[string][]byte{
		"valid":        valid,
		"undecodable":  []byte(`{"builder":"` + long + `","version":"x"}`),
		"unknownField": []byte(`{"builder":"mallory","surprise":1}`),
		"junk":         []byte(`not json`),
	} {
		r, _ := queue.DecodeResult(data)
		if got, want := routingBuilderOf(r, data), routingBuilder(data); got != want {
			t.Errorf("%s: scheduled as %q, the raw message names %q", name, got, want)
		}
	}
	if r, err := queue.DecodeResult(valid); err != nil || routingBuilderOf(r, valid) != testBuilder {
		t.Fatalf("valid result scheduled as %q (decode: %v)", routingBuilderOf(r, valid), err)
	}
}
