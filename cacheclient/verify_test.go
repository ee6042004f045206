package cacheclient_test

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testcache"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testkey"
)

type testBuilder struct {
	id     string
	signer *attest.Signer
}

func newBuilder(t testing.TB, id string) testBuilder {
	t.Helper()
	s, _ := testkey.Signer(t)
	return testBuilder{id: id, signer: s}
}

// attestOutput signs a real bundle in which b attests out.
func (b testBuilder) attestOutput(t testing.TB, out attest.Output) []byte {
	t.Helper()
	st, err := attest.NewStatement(&attest.Build{
		DrvPath: randomStorePath("x.drv"), System: "x86_64-linux", BuilderID: b.id,
		Installable: attest.Installable{Kind: "drv"}, Outputs: []attest.Output{out},
		StartedOn: time.Now(), FinishedOn: time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attest.Sign(context.Background(), st, b.signer)
	if err != nil {
		t.Fatal(err)
	}
	return bundle
}

// publishWithProvenance publishes a path and a sidecar holding bundles.
func (c *testCache) publishWithProvenance(t testing.TB, sp string, narBytes []byte, refs []string, bundles ...[]byte) {
	t.Helper()
	var bases []string
	for _, r := range refs {
		bases = append(bases, r[len("/nix/store/"):])
	}
	c.publish(t, sp, narBytes, zstdOf(t, narBytes), "zstd", bases...)
	testcache.PublishProvenance(t, c.dir, sp, narBytes, bundles...)
}

// Bundles decide as the pusher's sidecar says: a quorum of distinct
// trusted builders, counted by builder id or by what Distinct maps them to;
// an attestation of other references or another size does not count.
func TestVerifyBundlesAndQuorum(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	tc := newTestCache(t)
	c := tc.client(t)
	alice, bob, mallory := newBuilder(t, "alice"), newBuilder(t, "bob"), newBuilder(t, "mallory")
	v, err := attest.NewVerifier(nil, attest.WithKeys(
		attest.TrustedBuilder{ID: alice.id, PublicKey: alice.signer.GetPublicKey()},
		attest.TrustedBuilder{ID: bob.id, PublicKey: bob.signer.GetPublicKey()},
	))
	if err != nil {
		t.Fatal(err)
	}
	dep := randomStorePath("dep")
	sp := randomStorePath("pkg")
	narBytes := narOf(t, []byte("quorum"))
	out := attest.Output{Name: "out", Path: sp, NarHash: sha256.Sum256(narBytes), NarSize: uint64(len(narBytes)), References: []string{dep}}
	tc.publishWithProvenance(t, sp, narBytes, []string{dep}, alice.attestOutput(t, out), bob.attestOutput(t, out), mallory.attestOutput(t, out))

	check := func(name string, o cacheclient.VerifyOptions, wantOK bool, want string) {
		t.Helper()
		o.Verifier = v
		rep, err := c.Verify(ctx, sp, o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if rep.Verified != wantOK || !strings.Contains(rep.Verdict+" "+rep.Reason, want) {
			t.Fatalf("%s: verified=%v %q %q, want %v %q", name, rep.Verified, rep.Verdict, rep.Reason, wantOK, want)
		}
		if len(rep.Attestations) != 3 || rep.Attestations[2].Verified {
			t.Fatalf("%s: attestations %+v: mallory's must be listed and rejected", name, rep.Attestations)
		}
	}
	check("quorum 2", cacheclient.VerifyOptions{Quorum: 2}, true, "verified: 2 of 2")
	check("quorum 3", cacheclient.VerifyOptions{Quorum: 3}, false, "quorum not met: 2 distinct")
	oneOwner := func(_, _, _ string) string { return "owner:acme" }
	check("quorum 2, one owner", cacheclient.VerifyOptions{Quorum: 2, Distinct: oneOwner}, false, "quorum not met: 1 distinct")

	// Bob attests the same NAR with one reference dropped: his bundle does
	// not count (issue 11, finding 3), and quorum 2 fails.
	bad := out
	bad.References = nil
	tc.publishWithProvenance(t, sp, narBytes, []string{dep}, alice.attestOutput(t, out), bob.attestOutput(t, bad))
	rep, err := c.Verify(ctx, sp, cacheclient.VerifyOptions{Verifier: v, Quorum: 2})
	if err != nil || rep.Verified || !strings.Contains(rep.Attestations[1].Error, "references") {
		t.Fatalf("attested references differ: %v %+v", err, rep)
	}
	// Given bundles replace the sidecar.
	rep, err = c.Verify(ctx, sp, cacheclient.VerifyOptions{Verifier: v, Bundles: [][]byte{bob.attestOutput(t, out)}})
	if err != nil || !rep.Verified || len(rep.Attestations) != 1 || rep.Attestations[0].Builder != "bob" {
		t.Fatalf("given bundle: %v %+v", err, rep)
	}
	// A sidecar naming another path.
	tc.publishWithProvenance(t, sp, narBytes, []string{dep}, alice.attestOutput(t, out))
	tc.write(t, cachelayout.ProvenanceKey(sp), []byte(`{"version":1,"storePath":"`+dep+`","narSha256":"00","bundles":[]}`))
	if rep, err := c.Verify(ctx, sp, cacheclient.VerifyOptions{Verifier: v}); err != nil || rep.Verified || !strings.Contains(rep.Reason, "names") {
		t.Fatalf("sidecar of another path: %v %+v", err, rep)
	}
}
