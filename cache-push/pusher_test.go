package cachepush

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"google.golang.org/protobuf/types/known/structpb"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/ingest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testbundle"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/storepath"
	"codeberg.org/provenix/provenix/vsa"
)

const (
	testTenant  = "t1"
	testBuilder = "https://builders.example/alice"
)

// fixture is a pusher on a real embedded NATS server and a local store.
type fixture struct {
	srv      *natsserver.Server
	conn     *queue.Conn
	store    *local.Store
	pusher   *Pusher
	signer   *attest.Signer
	cachePub signature.PublicKey
	// vsaKey signs the pusher's verification summaries.
	vsaKey *attest.Signer

	mu     sync.Mutex
	events []*nats.Msg
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return newFixtureAt(t, "", nil)
}

// newFixtureAt is newFixture with the cache store in cacheDir (a fresh
// directory when "") and the pusher logging to log (nowhere when nil).
func newFixtureAt(t testing.TB, cacheDir string, log *slog.Logger) *fixture {
	t.Helper()
	srv, conn := testqueue.Embedded(t, natsserver.Config{})

	dir := t.TempDir()
	signer, err := attest.GenerateKeyFiles(filepath.Join(dir, "builder"))
	if err != nil {
		t.Fatal(err)
	}
	pol := "tenants: [" + testTenant + "]\nsystems: [x86_64-linux]\nbuilders:\n  - {id: \"" + testBuilder + "\", key: builder.pub}\n"
	p, err := policy.Parse([]byte(pol), dir)
	if err != nil {
		t.Fatal(err)
	}
	cachePub, err := GenerateKeyFiles("test-cache-1", filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	cacheKey, err := LoadKey(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	if cacheDir == "" {
		cacheDir = filepath.Join(dir, "cache-dir")
	}
	st, err := local.New(cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	vsaKey, err := attest.GenerateKeyFiles(filepath.Join(dir, "vsa"))
	if err != nil {
		t.Fatal(err)
	}
	vs, err := vsa.NewSigner(vsa.SignerOptions{Key: vsaKey})
	if err != nil {
		t.Fatal(err)
	}
	pu, err := New(Config{KV: conn, Store: st, Policy: p, CacheKey: cacheKey, Staging: conn, Events: conn, Logger: log,
		VSA: vs, UncheckedOutputPathsUnsafe: true}) // made-up derivations
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{srv: srv, conn: conn, store: st, pusher: pu, signer: signer, cachePub: cachePub, vsaKey: vsaKey}
	sub, err := conn.NATS().Subscribe("events.>", func(m *nats.Msg) {
		f.mu.Lock()
		f.events = append(f.events, m)
		f.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	return f
}

// storePath makes a valid store path for name.
func storePath(name string) string {
	h := sha256.Sum256([]byte(name))
	return storepath.Dir + "/" + nixbase32.EncodeToString(h[:20]) + "-" + name
}

// makeNAR serialises a small directory tree holding content.
func makeNAR(t testing.TB, content string) []byte {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "out")
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "hello"), []byte("#!/bin/sh\necho "+content+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := nar.DumpPath(&buf, dir); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// spec describes one test result; the hooks make it hostile.
type spec struct {
	name       string // derivation name
	content    string
	builderID  string
	signer     *attest.Signer
	mutateSt   func(st *intoto.Statement)
	mutateRes  func(r *queue.Result)
	stageBytes func(nar []byte) []byte
	// refs are references besides the path itself (which every output
	// here refers to).
	refs []string
}

// result builds, stages, signs and encodes a result per s.
func (f *fixture) result(t testing.TB, s spec) (*queue.Result, []byte) {
	t.Helper()
	ctx := testctx.New(t, 60*time.Second)
	if s.builderID == "" {
		s.builderID = testBuilder
	}
	if s.signer == nil {
		s.signer = f.signer
	}
	narBytes := makeNAR(t, s.content)
	out := attest.Output{Name: "out", Path: storePath(s.name), NarHash: sha256.Sum256(narBytes), NarSize: uint64(len(narBytes)),
		References: append([]string{storePath(s.name)}, s.refs...)}
	drv := storePath(s.name + ".drv")
	st, err := attest.NewStatement(&attest.Build{
		DrvPath: drv, System: "x86_64-linux", BuilderID: s.builderID,
		Installable: attest.Installable{Kind: "drv", Ref: drv},
		Outputs:     []attest.Output{out},
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.mutateSt != nil {
		s.mutateSt(st)
	}
	bundle, err := attest.Sign(ctx, st, s.signer)
	if err != nil {
		t.Fatal(err)
	}
	staged := narBytes
	if s.stageBytes != nil {
		staged = s.stageBytes(narBytes)
	}
	// Per test (hostile bytes must not shadow good ones), in the builder's
	// scope as builders stage: a mismatch there is the builder's own.
	key := queue.ScopedKey(queue.StagingKey(out.NarHashHex())+"-"+s.name, testBuilder)
	if _, err := f.conn.Stage(ctx, key, bytes.NewReader(staged)); err != nil {
		t.Fatal(err)
	}
	r := &queue.Result{
		Version: queue.ResultVersion, Tenant: testTenant, Builder: s.builderID, DrvPath: drv, System: "x86_64-linux",
		Outputs: []queue.Output{{Name: "out", Path: out.Path, NarHash: out.NarHashHex(), NarSize: out.NarSize, StagingKey: key, References: out.References}},
		Bundle:  bundle,
	}
	if s.mutateRes != nil {
		s.mutateRes(r)
	}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return r, data
}

func subject(r *queue.Result) string { return "results." + r.Tenant + "." + r.System }

// narinfos lists the narinfo keys in the cache.
func (f *fixture) narinfos(t *testing.T) []string {
	t.Helper()
	var keys []string
	for _, k := range f.keys(t, "") {
		if strings.HasSuffix(k, ".narinfo") {
			keys = append(keys, k)
		}
	}
	return keys
}

// keys lists every key in the cache under prefix.
// keys lists the cache's entries' objects under prefix: all but what the
// pusher stores when it opens (nix-cache-info, the verifier's documents).
func (f *fixture) keys(t *testing.T, prefix string) []string {
	t.Helper()
	var keys []string
	opened := []string{cachelayout.CacheInfoKey, cachelayout.PolicyKey, cachelayout.VerifierKey, cachelayout.VSAPublicKeyKey}
	err := f.store.List(testctx.New(t, 60*time.Second), prefix, func(i store.Info) error {
		if !slices.Contains(opened, i.Key) {
			keys = append(keys, i.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func (f *fixture) waitEvent(t *testing.T, kind, reason string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		for _, m := range f.events {
			if strings.HasSuffix(m.Subject, "."+kind) && (reason == "" || bytes.Contains(m.Data, []byte(`"reason":"`+reason+`"`))) {
				f.mu.Unlock()
				return
			}
		}
		f.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s event with reason %q", kind, reason)
}

// checkEntry asserts the cache entry of r is complete and correct, as a
// Nix client would check it.
func (f *fixture) checkEntry(t *testing.T, r *queue.Result) {
	t.Helper()
	ctx := testctx.New(t, 60*time.Second)
	o := r.Outputs[0]
	b, err := store.ReadAll(ctx, f.store, cachelayout.NarinfoKey(o.Path), 1<<20)
	if err != nil {
		t.Fatalf("narinfo: %v", err)
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if !signature.VerifyFirst(ni.Fingerprint(), ni.Signatures, []signature.PublicKey{f.cachePub}) {
		t.Fatalf("narinfo signature does not verify:\n%s", b)
	}
	if ni.StorePath != o.Path || ni.Compression != "zstd" || ni.NarSize != o.NarSize || len(ni.References) != len(o.References) {
		t.Fatalf("narinfo fields:\n%s", b)
	}
	rc, err := f.store.Open(ctx, ni.URL)
	if err != nil {
		t.Fatalf("NAR %s: %v", ni.URL, err)
	}
	defer rc.Close()
	zr, err := zstd.NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	h := sha256.New()
	if _, err := io.Copy(h, zr); err != nil {
		t.Fatal(err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, ni.NarHash.Digest()) {
		t.Fatalf("NAR hash %x, narinfo %x", got, ni.NarHash.Digest())
	}
	pb, err := store.ReadAll(ctx, f.store, cachelayout.ProvenanceKey(o.Path), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	prov, err := cachelayout.ParseProvenance(pb)
	if err != nil {
		t.Fatal(err)
	}
	if prov.NarSHA256 != o.NarHash || prov.StorePath != o.Path || len(prov.Bundles) != 1 {
		t.Fatalf("sidecar: %+v", prov)
	}
	v := f.checkVSA(t, f.pusher, o.Path)
	if len(v.InputAttestations) != 1 || !slices.Contains(v.VerifiedLevels, vsa.BuildLevel2) {
		t.Fatalf("VSA of a built path: %+v", v.Summary)
	}
	f.checkAllVSAs(t, f.pusher)
}

// checkVSA asserts that storePath's verification summary verifies with
// the fixture's VSA key, for the NAR its narinfo names, under the
// policy of p; and returns it.
func (f *fixture) checkVSA(t *testing.T, p *Pusher, storePath string) *vsa.Verified {
	t.Helper()
	ctx := testctx.New(t, 60*time.Second)
	b, err := store.ReadAll(ctx, f.store, cachelayout.NarinfoKey(storePath), 1<<20)
	if err != nil {
		t.Fatalf("narinfo of %s: %v", storePath, err)
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := store.ReadAll(ctx, f.store, cachelayout.VSAKey(storePath), 1<<20)
	if err != nil {
		t.Fatalf("published %s has no VSA: %v", storePath, err)
	}
	v, err := vsa.NewVerifier(nil, attest.WithKeys(vsa.TrustedVerifier{ID: vsa.DefaultVerifierID, PublicKey: f.vsaKey.GetPublicKey()}))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := p.cfg.Policy.Document()
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Verify(bundle, vsa.Expect{
		Subject:      vsa.Subject{Name: storePath, Digest: map[string]string{"sha256": hex.EncodeToString(ni.NarHash.Digest())}},
		PolicyDigest: vsa.DocumentDigest(doc),
		ResourceURI:  cachelayout.NarinfoKey(storePath),
	})
	if err != nil {
		t.Fatalf("VSA of %s: %v", storePath, err)
	}
	return got
}

// checkAllVSAs asserts that every narinfo in the cache has a VSA that
// verifies (checkVSA).
func (f *fixture) checkAllVSAs(t *testing.T, p *Pusher) {
	t.Helper()
	for _, k := range f.narinfos(t) {
		b, err := store.ReadAll(testctx.New(t, 60*time.Second), f.store, k, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		ni, err := narinfo.Parse(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		f.checkVSA(t, p, ni.StorePath)
	}
}

func alterPayload(t *testing.T, bundle []byte, old, new string) []byte {
	return testbundle.AlterPayload(t, bundle, old, new)
}

func TestProcessValid(t *testing.T) {
	f := newFixture(t)
	r, data := f.result(t, spec{name: "hello", content: "hi"})
	if err := f.pusher.Process(testctx.New(t, 60*time.Second), subject(r), data, r.MsgID()); err != nil {
		t.Fatal(err)
	}
	f.checkEntry(t, r)
	f.waitEvent(t, queue.EventPublished, "")
}

// TestProcessHostile feeds one hostile result after another to one pusher:
// each is rejected for its reason, nothing reaches the cache, and a valid
// result afterwards is still published.
func TestProcessHostile(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	otherKey, err := attest.GenerateKeyFiles(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		spec    spec
		raw     []byte // when set, sent instead of the spec's result
		reason  string
		wantErr error
	}{
		{spec: spec{name: "unknown-signer", signer: otherKey}, reason: ReasonVerification, wantErr: attest.ErrUnknownSigner},
		{spec: spec{name: "payload-altered", mutateRes: func(r *queue.Result) {
			r.Bundle = alterPayload(t, r.Bundle, `"x86_64-linux"`, `"x86_64-darwin"`)
		}}, reason: ReasonVerification, wantErr: attest.ErrSignature},
		{spec: spec{name: "staged-nar-differs", stageBytes: func(b []byte) []byte {
			c := bytes.Clone(b)
			c[len(c)-20] ^= 1
			return c
		}}, reason: ReasonNAR, wantErr: ingest.ErrNarHashMismatch},
		{spec: spec{name: "subject-name-differs", mutateRes: func(r *queue.Result) {
			r.Outputs[0].Path = storePath("something-else")
		}}, reason: ReasonVerification, wantErr: attest.ErrSubjectMismatch},
		{spec: spec{name: "wrong-predicate", mutateSt: func(st *intoto.Statement) {
			st.PredicateType = "https://slsa.dev/provenance/v0.2"
		}}, reason: ReasonVerification, wantErr: attest.ErrPredicateType},
		{spec: spec{name: "builder-not-in-policy", builderID: "https://builders.example/mallory"}, reason: ReasonPolicy, wantErr: policy.ErrBuilderNotTrusted},
		{spec: spec{name: "result-lies-about-derivation", mutateRes: func(r *queue.Result) {
			r.DrvPath = storePath("other.drv")
		}}, reason: ReasonInconsistent, wantErr: ErrRejected},
		{spec: spec{name: "truncated-nar", stageBytes: func(b []byte) []byte { return b[:len(b)/2] }}, reason: ReasonNAR, wantErr: ingest.ErrNarSizeMismatch},
		{spec: spec{name: "narsize-lie", mutateRes: func(r *queue.Result) {
			r.Outputs[0].NarSize += 8
		}}, reason: ReasonInconsistent, wantErr: ErrRejected},
		{spec: spec{name: "signed-narsize-lie", mutateSt: func(st *intoto.Statement) {
			n := st.Subject[0].Annotations.Fields["narSize"].GetNumberValue()
			st.Subject[0].Annotations.Fields["narSize"] = structpb.NewNumberValue(n + 8)
		}, mutateRes: func(r *queue.Result) { r.Outputs[0].NarSize += 8 }}, reason: ReasonNAR, wantErr: ingest.ErrNarSizeMismatch},
		{spec: spec{name: "wrong-subject-for-tenant", mutateRes: func(r *queue.Result) { r.Tenant = "t2" }}, reason: ReasonPolicy, wantErr: policy.ErrTenantNotAllowed},
		{raw: []byte(`{"version":1,"tenant":`), reason: ReasonMalformed, wantErr: queue.ErrMalformed},
		{raw: []byte(`{"version":1,"unknown":true}`), reason: ReasonMalformed, wantErr: queue.ErrMalformed},
		{raw: append(append([]byte(`{"version":1,"bundle":"`), bytes.Repeat([]byte("A"), queue.MaxResultSize)...), '"', '}'), reason: ReasonTooLarge, wantErr: queue.ErrTooLarge},
	}
	for _, tc := range tests {
		name := tc.spec.name
		if name == "" {
			name = tc.reason
		}
		t.Run(name, func(t *testing.T) {
			subj := "results." + testTenant + ".x86_64-linux"
			data, msgID := tc.raw, "raw"
			if data == nil {
				if tc.spec.content == "" {
					tc.spec.content = name
				}
				var r *queue.Result
				r, data = f.result(t, tc.spec)
				subj, msgID = subject(r), r.MsgID()
				if r.Tenant != testTenant {
					subj = "results." + r.Tenant + "." + r.System
				}
			}
			err := f.pusher.Process(ctx, subj, data, msgID)
			if !errors.Is(err, tc.wantErr) || !errors.Is(err, queue.ErrPermanent) || !errors.Is(err, ErrRejected) {
				t.Fatalf("Process = %v, want permanent %v", err, tc.wantErr)
			}
			if n := f.keys(t, ""); len(n) != 0 {
				t.Fatalf("cache has %v after a rejection", n)
			}
			f.waitEvent(t, queue.EventRejected, tc.reason)
		})
	}
	// Everything rejected; the same pusher still publishes a good result.
	r, data := f.result(t, spec{name: "after-hostile", content: "ok"})
	if err := f.pusher.Process(ctx, subject(r), data, r.MsgID()); err != nil {
		t.Fatalf("valid result after hostile ones: %v", err)
	}
	f.checkEntry(t, r)
}

func TestProcessDuplicateAndConflict(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	r, data := f.result(t, spec{name: "dup", content: "one"})
	for i := 0; i < 3; i++ {
		if err := f.pusher.Process(ctx, subject(r), data, r.MsgID()); err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	f.checkEntry(t, r)
	if n, nars := f.narinfos(t), f.keys(t, "nar/"); len(n) != 1 || len(nars) != 1 {
		t.Fatalf("after 3 deliveries: narinfos %v, NARs %v; want exactly one entry", n, nars)
	}
	before, _ := store.ReadAll(ctx, f.store, cachelayout.NarinfoKey(r.Outputs[0].Path), 1<<20)

	// Same store path, different NAR: a conflict, and the entry stays.
	r2, data2 := f.result(t, spec{name: "dup", content: "two"})
	err := f.pusher.Process(ctx, subject(r2), data2, r2.MsgID())
	if !errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), ReasonConflict) {
		t.Fatalf("conflicting result: %v", err)
	}
	after, _ := store.ReadAll(ctx, f.store, cachelayout.NarinfoKey(r.Outputs[0].Path), 1<<20)
	if !bytes.Equal(before, after) {
		t.Fatal("conflicting result changed the published narinfo")
	}
	f.waitEvent(t, queue.EventRejected, ReasonConflict)
}

// TestProcessCorruptExisting: a narinfo already in the cache that does not
// parse is a permanent conflict, not an endless retry, and stays as it is.
func TestProcessCorruptExisting(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	r, data := f.result(t, spec{name: "corrupt", content: "c"})
	garbage := "StorePath: not a store path\n"
	if err := store.Put(ctx, f.store, cachelayout.NarinfoKey(r.Outputs[0].Path), strings.NewReader(garbage)); err != nil {
		t.Fatal(err)
	}
	err := f.pusher.Process(ctx, subject(r), data, r.MsgID())
	if !errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), ReasonConflict) {
		t.Fatalf("Process over a corrupt narinfo: %v", err)
	}
	if b, _ := store.ReadAll(ctx, f.store, cachelayout.NarinfoKey(r.Outputs[0].Path), 1<<20); string(b) != garbage {
		t.Fatalf("corrupt narinfo replaced by %q", b)
	}
	if n := f.keys(t, "nar/"); len(n) != 0 {
		t.Fatalf("NAR written next to a corrupt narinfo: %v", n)
	}
}

// TestPusherConsumes runs the pusher as a consumer: a valid and a hostile
// result published through NATS; the valid one is published and acked, the
// hostile one terminated, and neither is left pending.
func TestPusherConsumes(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant)}); err != nil {
		t.Fatal(err)
	}
	bad, _ := f.result(t, spec{name: "bad", content: "bad", stageBytes: func(b []byte) []byte { return b[:10] }})
	good, _ := f.result(t, spec{name: "good", content: "good"})
	for _, r := range []*queue.Result{bad, good} {
		if _, err := f.conn.PublishResult(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := f.store.Stat(ctx, cachelayout.NarinfoKey(good.Outputs[0].Path)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("good result never published")
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.waitEvent(t, queue.EventRejected, ReasonNAR)
	if err := f.pusher.Close(ctx); err != nil {
		t.Fatal(err)
	}
	cons, err := f.conn.JetStream().Consumer(ctx, queue.StreamResults, queue.ConsumerPrefix+"g")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 0 || info.NumPending != 0 || info.NumRedelivered != 0 {
		t.Fatalf("consumer: %d ack pending, %d pending, %d redelivered", info.NumAckPending, info.NumPending, info.NumRedelivered)
	}
	f.checkEntry(t, good)
	if _, err := f.store.Stat(ctx, cachelayout.NarinfoKey(bad.Outputs[0].Path)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("bad result in cache: %v", err)
	}
}

// TestOpenStoresCacheInfo: Open stores the nix-cache-info the cache server
// would make up, so the cache directory or bucket is a whole binary cache
// without Provenix in front; an operator's own is left as it is.
func TestOpenStoresCacheInfo(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant)}); err != nil {
		t.Fatal(err)
	}
	defer f.pusher.Close(ctx)
	got, err := store.ReadAll(ctx, f.store, "nix-cache-info", 1<<10)
	if err != nil || string(got) != cachelayout.CacheInfo(0) {
		t.Fatalf("nix-cache-info = %q, %v; want %q", got, err, cachelayout.CacheInfo(0))
	}

	own := "StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 10\n"
	if err := store.Put(ctx, f.store, "nix-cache-info", strings.NewReader(own)); err != nil {
		t.Fatal(err)
	}
	if err := ensureCacheInfo(ctx, f.store); err != nil {
		t.Fatal(err)
	}
	if got, _ := store.ReadAll(ctx, f.store, "nix-cache-info", 1<<10); string(got) != own {
		t.Fatalf("the operator's nix-cache-info was replaced by %q", got)
	}
}

// commitHook counts the commits made through it, and calls created
// before each Create with how many came before.
type commitHook struct {
	store.Store
	mu      sync.Mutex
	commits map[string]int
	creates int
	created func(n int)
}

func (h *commitHook) Create(ctx context.Context) (store.Pending, error) {
	h.mu.Lock()
	n := h.creates
	h.creates++
	h.mu.Unlock()
	h.created(n)
	p, err := h.Store.Create(ctx)
	if err != nil {
		return nil, err
	}
	return &hookPending{Pending: p, h: h}, nil
}

type hookPending struct {
	store.Pending
	h *commitHook
}

func (p *hookPending) Commit(ctx context.Context, key string) error {
	if err := p.Pending.Commit(ctx, key); err != nil {
		return err
	}
	p.h.mu.Lock()
	p.h.commits[key]++
	p.h.mu.Unlock()
	return nil
}

// TestRedeliveredWhileIngesting: a result redelivered to a second member
// of the group while the first still ingests it (heartbeats lost in an
// election) is published by whichever finishes first; the other merges
// into that narinfo instead of writing it again.
func TestRedeliveredWhileIngesting(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	r, data := f.result(t, spec{name: "twice", content: "twice"})
	var once sync.Once
	var firstErr error
	hook := &commitHook{Store: f.store, commits: map[string]int{}}
	hook.created = func(n int) {
		if n == 1 {
			// The other member publishes the path while this one is
			// between its NAR (the first object it writes, committed
			// with the sidecar and the narinfo) and its narinfo.
			once.Do(func() { firstErr = f.pusher.Process(ctx, subject(r), data, r.MsgID()) })
		}
	}
	cfg := f.pusher.cfg
	cfg.Store = hook
	second, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Process(ctx, subject(r), data, r.MsgID()); err != nil {
		t.Fatal(err)
	}
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	if _, err := f.store.Stat(ctx, cachelayout.NarinfoKey(r.Outputs[0].Path)); err != nil {
		t.Fatalf("no narinfo: %v", err)
	}
	if n := hook.commits[cachelayout.NarinfoKey(r.Outputs[0].Path)]; n != 0 {
		t.Fatalf("the second member wrote the narinfo again (%d times) over the first one's", n)
	}
}
