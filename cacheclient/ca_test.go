package cacheclient_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testcache"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnix"
)

// buildClosure builds examples/closure.nix's top with a unique message and
// returns its closure (nix-store -qR).
func buildClosure(t testing.TB, ctx context.Context) []string {
	t.Helper()
	_, closure := testnix.BuildClosure(t, ctx, "cacheclient-"+t.Name()+time.Now().Format(time.RFC3339Nano))
	return closure
}

// Content-addressed paths Nix made (a builtins.path source, fixed:r:sha256;
// a builtins.toFile text, text:sha256; a flat fixed-output derivation
// output, fixed:sha256) are verified by their content address, without
// provenance; a changed CA, or a CA over other content, is refused.
func TestVerifyContentAddressed(t *testing.T) {
	ctx := testctx.New(t, 3*time.Minute)
	closure := buildClosure(t, ctx)
	tc := newTestCache(t)
	c := tc.client(t)
	v, err := attest.NewVerifier(nil)
	if err != nil {
		t.Fatal(err)
	}
	o := cacheclient.VerifyOptions{Verifier: v}
	for _, suffix := range []string{"-busybox", "-greeting.txt", "-closure-fixed"} {
		p := testnix.PathNamed(t, closure, suffix)
		ni := testcache.Publish(t, ctx, tc.dir, tc.sk, p)
		if ni.CA == "" {
			t.Fatalf("%s: Nix registered no CA", p)
		}
		rep, err := c.Verify(ctx, p, o)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Verified || !strings.Contains(rep.Verdict, "content-addressed") || rep.ContentAddress != ni.CA {
			t.Fatalf("%s (%s): %+v", p, ni.CA, rep)
		}

		// The CA of another content (signed by the cache, so only the
		// content address check can catch it).
		good := ni.CA
		ni.CA = good[:len(good)-4] + "aaaa"
		testcache.Sign(t, ni, tc.sk)
		tc.write(t, cachelayout.NarinfoKey(p), []byte(ni.String()))
		if rep, err := c.Verify(ctx, p, o); err != nil || rep.Verified || !strings.Contains(rep.Reason, "content address") {
			t.Fatalf("%s with CA %s: %v %+v", p, ni.CA, err, rep)
		}
		ni.CA = good
	}

	// A path that is not content-addressed claiming a CA: the store path is
	// not the one the CA gives.
	dep := testnix.PathNamed(t, closure, "-closure-dep-a")
	ni := testcache.Publish(t, ctx, tc.dir, tc.sk, dep)
	ni.CA = "fixed:r:" + ni.NarHash.String()
	testcache.Sign(t, ni, tc.sk)
	tc.write(t, cachelayout.NarinfoKey(dep), []byte(ni.String()))
	rep, err := c.Verify(ctx, dep, o)
	if err != nil || rep.Verified || !strings.Contains(rep.Reason, "computes") {
		t.Fatalf("input-addressed path with a CA: %v %+v", err, rep)
	}
	// Without a CA and without provenance: not verified.
	ni.CA = ""
	testcache.Sign(t, ni, tc.sk)
	tc.write(t, cachelayout.NarinfoKey(dep), []byte(ni.String()))
	if rep, err := c.Verify(ctx, dep, o); err != nil || rep.Verified || rep.Reason != "no provenance found" {
		t.Fatalf("no provenance: %v %+v", err, rep)
	}
}

// VerifyClosure over a closure published path by path (with CAs, no
// provenance: only its content-addressed paths verify), then with a
// missing and an untrusted dependency.
func TestVerifyClosureWalk(t *testing.T) {
	ctx := testctx.New(t, 3*time.Minute)
	closure := buildClosure(t, ctx)
	tc := newTestCache(t)
	c := tc.client(t)
	v, _ := attest.NewVerifier(nil)
	for _, p := range closure {
		testcache.Publish(t, ctx, tc.dir, tc.sk, p)
	}
	top := testnix.PathNamed(t, closure, "-closure-top")
	var progress, walked []int
	cr, err := c.VerifyClosure(ctx, top, cacheclient.ClosureOptions{
		VerifyOptions: cacheclient.VerifyOptions{Verifier: v},
		Walking:       func(found int) { walked = append(walked, found) },
		Progress: func(done, total int, r *cacheclient.Report) {
			if total != len(closure) {
				t.Errorf("progress total %d, closure %d", total, len(closure))
			}
			progress = append(progress, done)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if cr.Total != len(closure) || len(progress) != len(closure) || cr.Paths[0].StorePath != top || cr.Verified {
		t.Fatalf("closure report: total %d (want %d), progress %v, first %s, verified %v", cr.Total, len(closure), progress, cr.Paths[0].StorePath, cr.Verified)
	}
	if len(walked) == 0 || walked[len(walked)-1] != len(closure) {
		t.Fatalf("walk progress %v, closure %d", walked, len(closure))
	}
	if cr.Good != 3 || cr.Bad != len(closure)-3 {
		t.Fatalf("%d verified, %d not: want the 3 content-addressed paths verified", cr.Good, cr.Bad)
	}

	// dep-a's narinfo missing: reported as not in the cache, named with
	// the path that refers to it; its own references are not followed
	// (busybox is still reached through other paths).
	dep := testnix.PathNamed(t, closure, "-closure-dep-a")
	os.Remove(filepath.Join(tc.dir, cachelayout.NarinfoKey(dep)))
	cr, err = c.VerifyClosure(ctx, top, cacheclient.ClosureOptions{VerifyOptions: cacheclient.VerifyOptions{Verifier: v}})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range cr.Paths {
		if r.StorePath == dep {
			found = true
			if r.Verified || !strings.Contains(r.Reason, "not in the cache (referenced by") {
				t.Fatalf("missing dep: %+v", r)
			}
		}
	}
	if !found || cr.Total != len(closure) {
		t.Fatalf("missing dep not reported (total %d)", cr.Total)
	}
	// The root's narinfo signed by another key: a verdict (the root NOT
	// VERIFIED, nothing followed), not an error.
	other := newTestCache(t)
	testcache.Publish(t, ctx, tc.dir, other.sk, top)
	cr, err = c.VerifyClosure(ctx, top, cacheclient.ClosureOptions{VerifyOptions: cacheclient.VerifyOptions{Verifier: v}})
	if err != nil || cr.Total != 1 || cr.Verified || !strings.Contains(cr.Paths[0].Reason, "not signed by a trusted cache key") {
		t.Fatalf("untrusted root: %v %+v", err, cr)
	}
	// The root missing: no verdict.
	os.Remove(filepath.Join(tc.dir, cachelayout.NarinfoKey(top)))
	if _, err := c.VerifyClosure(ctx, top, cacheclient.ClosureOptions{VerifyOptions: cacheclient.VerifyOptions{Verifier: v}}); !errors.Is(err, cacheclient.ErrNotFound) {
		t.Fatalf("missing root: %v, want ErrNotFound", err)
	}
}
