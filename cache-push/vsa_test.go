package cachepush

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfulcio"
	"codeberg.org/provenix/provenix/internal/testrekor"
	"codeberg.org/provenix/provenix/internal/testtsa"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/vsa"
)

// TestVSAPublishedOnOpen: an opened pusher publishes the policy its
// summaries name, its VSA key, and the verifier document signed by the
// cache key; a published path's summary names that policy.
func TestVSAPublishedOnOpen(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant)}); err != nil {
		t.Fatal(err)
	}
	defer f.pusher.Close(ctx)
	read := func(key string) []byte {
		b, err := store.ReadAll(ctx, f.store, key, 1<<20)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		return b
	}
	var d cachelayout.VerifierDocument
	if err := json.Unmarshal(read(cachelayout.VerifierKey), &d); err != nil {
		t.Fatal(err)
	}
	pem, err := f.vsaKey.GetPublicKeyPem()
	if err != nil {
		t.Fatal(err)
	}
	if d.VerifierID != vsa.DefaultVerifierID || d.PublicKey != pem || string(read(cachelayout.VSAPublicKeyKey)) != pem {
		t.Fatalf("verifier document %+v, vsa.pub %q", d, read(cachelayout.VSAPublicKeyKey))
	}
	sig, err := signature.ParseSignature(d.Signatures[0])
	if err != nil || !f.cachePub.Verify(d.Fingerprint(), sig) {
		t.Fatalf("verifier document not signed by the cache key: %v", err)
	}
	// Another key in the document no longer matches the signature.
	d.PublicKey = strings.Replace(d.PublicKey, "A", "B", 1)
	if f.cachePub.Verify(d.Fingerprint(), sig) {
		t.Fatal("the cache key's signature covers a document with another key")
	}

	var pol cachelayout.PolicyDocument
	policyDoc := read(cachelayout.PolicyKey)
	if err := json.Unmarshal(policyDoc, &pol); err != nil || !strings.Contains(pol.Policy, testBuilder) || !strings.Contains(pol.Keys[testBuilder], "PUBLIC KEY") {
		t.Fatalf("published policy %v: %s", err, policyDoc)
	}
	r, data := f.result(t, spec{name: "hello", content: "hi"})
	if err := f.pusher.Process(ctx, subject(r), data, r.MsgID()); err != nil {
		t.Fatal(err)
	}
	if got := f.checkVSA(t, f.pusher, r.Outputs[0].Path); got.Policy.Digest["sha256"] != vsa.DocumentDigest(policyDoc)["sha256"] || got.Policy.URI != cachelayout.PolicyKey {
		t.Fatalf("summary names policy %+v, the cache serves %v", got.Policy, vsa.DocumentDigest(policyDoc))
	}
}

// failingVSAStore fails every write of a verification summary.
type failingVSAStore struct{ store.Store }

var errVSAWrite = errors.New("VSA write refused")

func (s failingVSAStore) Create(ctx context.Context) (store.Pending, error) {
	p, err := s.Store.Create(ctx)
	if err != nil {
		return nil, err
	}
	return failingVSAPending{p}, nil
}

type failingVSAPending struct{ store.Pending }

func (p failingVSAPending) Commit(ctx context.Context, key string) error {
	if strings.HasSuffix(key, cachelayout.VSASuffix) {
		p.Abort()
		return errVSAWrite
	}
	return p.Pending.Commit(ctx, key)
}

// TestNoNarinfoWithoutVSA: when the summary cannot be stored, the path
// is not published: the narinfo is written after the summary, never
// without it.
func TestNoNarinfoWithoutVSA(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	cfg := f.pusher.cfg
	cfg.Store = failingVSAStore{f.store}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, data := f.result(t, spec{name: "hello", content: "hi"})
	if err := p.Process(ctx, subject(r), data, r.MsgID()); !errors.Is(err, errVSAWrite) {
		t.Fatalf("Process = %v, want the VSA write's error", err)
	}
	if n := f.narinfos(t); len(n) != 0 {
		t.Fatalf("narinfo published without its VSA: %v", n)
	}
	// Once summaries can be written, the redelivered result is published
	// with one.
	if err := f.pusher.Process(ctx, subject(r), data, r.MsgID()); err != nil {
		t.Fatal(err)
	}
	f.checkEntry(t, r)
}

// TestVSAKeylessNeedsIdentity: a pusher with a keyless signer and no reachable Fulcio
// publishes nothing (no narinfo without a summary); NewSigner refuses
// keyless options without an identity.
func TestVSAKeylessNeedsIdentity(t *testing.T) {
	if _, err := vsa.NewSigner(vsa.SignerOptions{Keyless: &attest.KeylessOptions{FulcioURL: "http://127.0.0.1:1", RekorURL: "http://127.0.0.1:1", IDToken: "x"}}); err == nil {
		t.Fatal("keyless signer without issuer and SAN accepted")
	}
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	s, err := vsa.NewSigner(vsa.SignerOptions{Keyless: &attest.KeylessOptions{FulcioURL: "http://127.0.0.1:1", RekorURL: "http://127.0.0.1:1", IDToken: "x"},
		Issuer: "https://issuer.example", SAN: "https://pusher.example"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.pusher.cfg
	cfg.VSA = s
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, data := f.result(t, spec{name: "hello", content: "hi"})
	if err := p.Process(ctx, subject(r), data, r.MsgID()); err == nil {
		t.Fatal("published with an unreachable Fulcio")
	}
	if n := f.narinfos(t); len(n) != 0 {
		t.Fatalf("narinfo published without its VSA: %v", n)
	}
}

// TestVSABackfilled: a path published without a summary (by a pusher
// before it signed them) gets one when a result for it verifies again.
func TestVSABackfilled(t *testing.T) {
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	cfg := f.pusher.cfg
	cfg.VSA = nil
	old, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, data := f.result(t, spec{name: "hello", content: "hi"})
	if err := old.Process(ctx, subject(r), data, r.MsgID()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Stat(ctx, cachelayout.VSAKey(r.Outputs[0].Path)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a pusher without a VSA signer wrote one: %v", err)
	}
	if err := f.pusher.Process(ctx, subject(r), data, r.MsgID()); err != nil {
		t.Fatal(err)
	}
	f.checkEntry(t, r)

	// Under a new policy (another builder added), the result verifies
	// again and the summary is signed anew, naming it.
	extra, err := attest.GenerateKeyFiles(filepath.Join(t.TempDir(), "extra"))
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := extra.GetPublicKeyPem()
	doc, _ := f.pusher.cfg.Policy.Document()
	var pd cachelayout.PolicyDocument
	json.Unmarshal(doc, &pd)
	inline := func(id, pem string) string {
		return "  - id: " + id + "\n    key: |\n      " + strings.ReplaceAll(strings.TrimSpace(pem), "\n", "\n      ") + "\n"
	}
	pol, err := policy.Parse([]byte("tenants: ["+testTenant+"]\nsystems: [x86_64-linux]\nbuilders:\n"+
		inline(testBuilder, pd.Keys[testBuilder])+inline("extra", pem)), t.TempDir())
	if err != nil {
		t.Fatalf("new policy: %v", err)
	}
	cfg = f.pusher.cfg
	cfg.Policy = pol
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Process(ctx, subject(r), data, r.MsgID()); err != nil {
		t.Fatal(err)
	}
	f.checkVSA(t, p, r.Outputs[0].Path)
	// And a redelivery under the same policy keeps it.
	before, _ := store.ReadAll(ctx, f.store, cachelayout.VSAKey(r.Outputs[0].Path), 1<<20)
	if err := p.Process(ctx, subject(r), data, r.MsgID()); err != nil {
		t.Fatal(err)
	}
	if after, _ := store.ReadAll(ctx, f.store, cachelayout.VSAKey(r.Outputs[0].Path), 1<<20); string(after) != string(before) {
		t.Fatal("a current summary was signed again")
	}
}

// TestVSAKeylessPusher: a pusher with an OIDC identity signs its
// summaries keylessly (a real Fulcio, Rekor v2 log and TSA): the verifier
// document names the identity (no key, no vsa.pub), signed by the cache
// key, and the published path's summary verifies for that identity.
func TestVSAKeylessPusher(t *testing.T) {
	const email = "pusher@provenix.test"
	log, ca, tsa := testrekor.Start(t), testfulcio.Start(t), testtsa.Start(t)
	trusted := ca.TrustedRoot(t, log.TrustedRoot.RekorLogs(), tsa.Authority)
	f := newFixture(t)
	ctx := testctx.New(t, 60*time.Second)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(ca.Token(t, email)), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := vsa.NewSigner(vsa.SignerOptions{Keyless: &attest.KeylessOptions{FulcioURL: ca.URL, RekorURL: log.URL, TSAURL: tsa.URL},
		IDTokenFile: tokenFile, Issuer: ca.Issuer, SAN: email})
	if err != nil {
		t.Fatal(err)
	}
	// A key-signing pusher ran before: its vsa.pub must not outlive it.
	if err := f.pusher.Open(ctx, f.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant)}); err != nil {
		t.Fatal(err)
	}
	f.pusher.Close(ctx)
	cfg := f.pusher.cfg
	cfg.VSA = s
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Open(ctx, f.conn, queue.ConsumerOptions{Group: "g", FilterSubject: queue.ResultsFilter(testTenant)}); err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	b, err := store.ReadAll(ctx, f.store, cachelayout.VerifierKey, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var d cachelayout.VerifierDocument
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	sig, err := signature.ParseSignature(d.Signatures[0])
	if err != nil || d.Issuer != ca.Issuer || d.SAN != email || d.PublicKey != "" || !f.cachePub.Verify(d.Fingerprint(), sig) {
		t.Fatalf("verifier document %s (%v)", b, err)
	}
	if _, err := f.store.Stat(ctx, cachelayout.VSAPublicKeyKey); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a keyless pusher left %s: %v", cachelayout.VSAPublicKeyKey, err)
	}

	r, data := f.result(t, spec{name: "hello", content: "hi"})
	if err := p.Process(ctx, subject(r), data, r.MsgID()); err != nil {
		t.Fatal(err)
	}
	bundle, err := store.ReadAll(ctx, f.store, cachelayout.VSAKey(r.Outputs[0].Path), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vsa.NewVerifier(trusted, attest.WithIdentities(vsa.TrustedIdentity{ID: vsa.DefaultVerifierID, Issuer: ca.Issuer, SAN: email}))
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := p.cfg.Policy.Document()
	if _, err := v.Verify(bundle, vsa.Expect{Subject: vsa.Subject{Name: r.Outputs[0].Path, Digest: map[string]string{"sha256": r.Outputs[0].NarHash}},
		PolicyDigest: vsa.DocumentDigest(doc)}); err != nil {
		t.Fatalf("keyless VSA: %v", err)
	}
}
