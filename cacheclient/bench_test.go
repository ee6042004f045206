package cacheclient_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/internal/testctx"
)

// textPath publishes a builtins.toFile-like path (text:sha256, with
// references) holding content, computing its store path the way Nix does.
func (c *testCache) textPath(t testing.TB, name string, content []byte, refs []string) string {
	t.Helper()
	typ := "text"
	for _, r := range refs { // refs are given sorted
		typ += ":" + r
	}
	ch := sha256.Sum256(content)
	s := sha256.Sum256([]byte(typ + ":sha256:" + hex.EncodeToString(ch[:]) + ":/nix/store:" + name))
	sp := "/nix/store/" + nixbase32.EncodeToString(nixhash.CompressHash(s[:], 20)) + "-" + name
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))})
	w.Write(content)
	w.Close()
	var bases []string
	for _, r := range refs {
		bases = append(bases, path.Base(r))
	}
	ni := c.publish(t, sp, buf.Bytes(), zstdOf(t, buf.Bytes()), "zstd", bases...)
	ni.CA = "text:" + nixhash.MustNewHashWithEncoding(nixhash.SHA256, ch[:], nixhash.NixBase32, true).String()
	c.putNarinfo(t, ni, c.sk)
	return sp
}

// syntheticClosure publishes n text paths, each referring to the two
// before it, and returns the last (whose closure is all of them).
func syntheticClosure(t testing.TB, c *testCache, n int) string {
	var paths []string
	for i := range n {
		var refs []string
		for j := max(0, i-2); j < i; j++ {
			refs = append(refs, paths[j])
		}
		if len(refs) == 2 && refs[0] > refs[1] {
			refs[0], refs[1] = refs[1], refs[0]
		}
		paths = append(paths, c.textPath(t, fmt.Sprintf("p%d", i), bytes.Repeat([]byte(fmt.Sprintf("path %d %v\n", i, refs)), 200), refs))
	}
	return paths[n-1]
}

func TestVerifyClosureSynthetic(t *testing.T) {
	ctx := testctx.New(t, 2*time.Minute)
	tc := newTestCache(t)
	root := syntheticClosure(t, tc, 200)
	v, _ := attest.NewVerifier(nil)
	t0 := time.Now()
	cr, err := tc.client(t).VerifyClosure(ctx, root, cacheclient.ClosureOptions{VerifyOptions: cacheclient.VerifyOptions{Verifier: v}})
	if err != nil {
		t.Fatal(err)
	}
	if !cr.Verified || cr.Total != 200 {
		t.Fatalf("closure: %d paths, %d not verified; first bad: %+v", cr.Total, cr.Bad, firstBad(cr))
	}
	t.Logf("200-path closure verified in %v", time.Since(t0))
}

func firstBad(cr *cacheclient.ClosureReport) *cacheclient.Report {
	for _, r := range cr.Paths {
		if !r.Verified {
			return r
		}
	}
	return nil
}

func BenchmarkVerifyClosure200(b *testing.B) {
	tc := newTestCache(b)
	root := syntheticClosure(b, tc, 200)
	v, _ := attest.NewVerifier(nil)
	c := tc.client(b)
	ctx := testctx.New(b, 10*time.Minute)
	for b.Loop() {
		cr, err := c.VerifyClosure(ctx, root, cacheclient.ClosureOptions{VerifyOptions: cacheclient.VerifyOptions{Verifier: v}})
		if err != nil || !cr.Verified {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/200, "µs/path")
}
