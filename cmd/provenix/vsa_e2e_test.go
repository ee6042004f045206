package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testbundle"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/up"
	"codeberg.org/provenix/provenix/vsa"
)

// TestVSAEndToEnd (issue 15 item 1): `provenix up` signs a verification
// summary of every path it publishes with its own key (generated into the
// data directory); `provenix verify --cache` checks it with that key or
// with the key the cache publishes under its cache key's signature, and
// refuses a summary naming another policy than the served one, another
// NAR, or with a bad signature; cosign verifies it and rejects a tampered
// one.
func TestVSAEndToEnd(t *testing.T) {
	busybox := requireNix(t)
	cosign := testproc.Cosign(t)
	ctx := testctx.New(t, 5*time.Minute)
	dir := t.TempDir()
	stack := startStack(t, up.Config{DataDir: dir})
	p := stack.Paths()
	pub := buildSample(t, ctx, busybox, "--data-dir", dir)
	out := pub.Outputs[0]
	waitNarinfo(t, stack.CacheURL(), out.Path)

	// Every published path has its summary.
	narinfos, err := filepath.Glob(filepath.Join(p.Cache(), "*"+cachelayout.NarinfoSuffix))
	if err != nil || len(narinfos) == 0 {
		t.Fatalf("no narinfos in the cache: %v", err)
	}
	for _, n := range narinfos {
		h := strings.TrimSuffix(filepath.Base(n), cachelayout.NarinfoSuffix)
		if _, err := os.Stat(filepath.Join(p.Cache(), h+cachelayout.VSASuffix)); err != nil {
			t.Errorf("%s has no VSA: %v", filepath.Base(n), err)
		}
	}
	vsaFile := filepath.Join(p.Cache(), cachelayout.VSAKey(out.Path))
	good, err := os.ReadFile(vsaFile)
	if err != nil {
		t.Fatal(err)
	}

	verify := func(extra ...string) (string, int) {
		t.Helper()
		args := append([]string{"verify", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub()}, extra...)
		stdout, stderr, code := cli(t, ctx, append(args, out.Path)...)
		return stdout + stderr, code
	}
	// The published key, vouched for by the cache key.
	if o, code := verify(); code != 0 || !strings.Contains(o, "verification summary: PASSED by \""+vsa.DefaultVerifierID+"\" (published key, signed by the trusted cache key") ||
		!strings.Contains(o, vsa.BuildLevel2) {
		t.Fatalf("verify: exit %d\n%s", code, o)
	} else {
		t.Logf("verify:\n%s", o)
	}
	// A pinned key: the data directory's, and JSON says so.
	if o, code := verify("--vsa-key", p.VSAPub(), "--json"); code != 0 {
		t.Fatalf("verify --vsa-key: exit %d\n%s", code, o)
	} else {
		var rep cacheclient.Report
		if err := json.Unmarshal([]byte(o), &rep); err != nil || rep.VSA == nil || !rep.VSA.Verified || rep.VSA.Trust != "pinned key" {
			t.Fatalf("verify --json: %v\n%s", err, o)
		}
	}
	other := filepath.Join(t.TempDir(), "other")
	if _, err := attest.GenerateKeyFiles(other); err != nil {
		t.Fatal(err)
	}
	if o, code := verify("--vsa-key", other+".pub"); code != exitFailed || !strings.Contains(o, "signer not trusted") {
		t.Fatalf("verify with another pinned VSA key: exit %d, want %d\n%s", code, exitFailed, o)
	}

	// Summaries signed with the pusher's own key, as a pusher whose key
	// leaked, or a replayed summary of other content, would present them.
	signer, err := attest.LoadSigner(p.VSAKey())
	if err != nil {
		t.Fatal(err)
	}
	policyDoc, err := os.ReadFile(filepath.Join(p.Cache(), cachelayout.PolicyKey))
	if err != nil {
		t.Fatal(err)
	}
	summary := func(edit func(s *vsa.Summary)) []byte {
		s := &vsa.Summary{
			Subjects:    []vsa.Subject{{Name: out.Path, Digest: map[string]string{"sha256": out.NarSHA256}}},
			VerifierID:  vsa.DefaultVerifierID,
			ResourceURI: cachelayout.NarinfoKey(out.Path),
			Policy:      vsa.Ref{URI: cachelayout.PolicyKey, Digest: vsa.DocumentDigest(policyDoc)},
			Result:      vsa.Passed, VerifiedLevels: []string{vsa.BuildLevel2},
		}
		edit(s)
		b, err := vsa.Sign(ctx, s, signer)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	refused := func(name string, bundle []byte, want string) {
		t.Helper()
		if err := os.WriteFile(vsaFile, bundle, 0o644); err != nil {
			t.Fatal(err)
		}
		o, code := verify()
		if code != exitFailed || !strings.Contains(o, want) {
			t.Fatalf("%s: exit %d, want %d with %q\n%s", name, code, exitFailed, want, o)
		}
		t.Logf("%s refused: %s", name, o[strings.Index(o, "verification summary"):])
	}
	if err := os.WriteFile(vsaFile, summary(func(*vsa.Summary) {}), 0o644); err != nil {
		t.Fatal(err)
	}
	if o, code := verify(); code != 0 {
		t.Fatalf("a well-formed summary of the test's own: exit %d\n%s", code, o)
	}
	laxPolicy := []byte(strings.Replace(string(policyDoc), "builders", "builders_lax", 1))
	refused("another policy", summary(func(s *vsa.Summary) { s.Policy.Digest = vsa.DocumentDigest(laxPolicy) }), "names another policy")
	otherNAR := strings.Repeat("ab", 32)
	refused("another NAR hash", summary(func(s *vsa.Summary) { s.Subjects[0].Digest["sha256"] = otherNAR }), "digest mismatch")
	// A summary raised to level 3 after signing.
	raised := testbundle.AlterPayload(t, good, vsa.BuildLevel2, "SLSA_BUILD_LEVEL_3")
	refused("tampered", raised, "bad signature")
	refused("FAILED", summary(func(s *vsa.Summary) { s.Result = vsa.Failed }), "did not pass")
	if err := os.Remove(vsaFile); err != nil {
		t.Fatal(err)
	}
	if o, code := verify(); code != 0 || !strings.Contains(o, "verification summary: none for this path") {
		t.Fatalf("without a summary, not required: exit %d\n%s", code, o)
	}
	if o, code := verify("--require-vsa"); code != exitFailed || !strings.Contains(o, "no verification summary") {
		t.Fatalf("without a summary, --require-vsa: exit %d, want %d\n%s", code, exitFailed, o)
	}
	if err := os.WriteFile(vsaFile, good, 0o644); err != nil {
		t.Fatal(err)
	}

	// The cache serving another policy than its summaries name.
	policyFile := filepath.Join(p.Cache(), cachelayout.PolicyKey)
	if err := os.WriteFile(policyFile, laxPolicy, 0o644); err != nil {
		t.Fatal(err)
	}
	refused("a policy other than the served one", good, "names another policy")
	if err := os.WriteFile(policyFile, policyDoc, 0o644); err != nil {
		t.Fatal(err)
	}

	// A verifier document with another key, signed by another cache key:
	// the trusted cache key does not vouch for it, so nothing verifies.
	docFile := filepath.Join(p.Cache(), cachelayout.VerifierKey)
	doc, err := os.ReadFile(docFile)
	if err != nil {
		t.Fatal(err)
	}
	var d cachelayout.VerifierDocument
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	otherPEM, _ := os.ReadFile(other + ".pub")
	d.PublicKey = string(otherPEM)
	sk, _, err := signature.GenerateKeypair("mallory-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := sk.Sign(rand.Reader, d.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	d.Signatures = []string{sig.String()}
	forged, _ := json.Marshal(d)
	if err := os.WriteFile(docFile, forged, 0o644); err != nil {
		t.Fatal(err)
	}
	refused("a verifier document the cache key did not sign", good, "not signed by a trusted cache key")
	if err := os.WriteFile(docFile, doc, 0o644); err != nil {
		t.Fatal(err)
	}

	// cosign, independently: the summary verifies for the NAR's bytes
	// with the published key; a tampered one does not.
	narFile := filepath.Join(t.TempDir(), "out.nar")
	nar, err := exec.CommandContext(ctx, "nix-store", "--dump", out.Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(narFile, nar, 0o644); err != nil {
		t.Fatal(err)
	}
	pubKey := filepath.Join(t.TempDir(), "vsa.pub")
	served, err := os.ReadFile(filepath.Join(p.Cache(), cachelayout.VSAPublicKeyKey))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pubKey, served, 0o644)
	cosignVerify := func(bundle []byte) ([]byte, error) {
		f := filepath.Join(t.TempDir(), "vsa.json")
		os.WriteFile(f, bundle, 0o644)
		cmd := exec.CommandContext(ctx, cosign, "verify-blob-attestation", "--key", pubKey, "--type", vsa.PredicateType,
			"--bundle", f, "--new-bundle-format", "--insecure-ignore-tlog", narFile)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		return cmd.CombinedOutput()
	}
	if b, err := cosignVerify(good); err != nil || !bytes.Contains(b, []byte("Verified OK")) {
		t.Fatalf("cosign refused the pusher's VSA: %v\n%s", err, b)
	}
	if b, err := cosignVerify(raised); err == nil {
		t.Fatalf("cosign accepted a tampered VSA:\n%s", b)
	}
}
