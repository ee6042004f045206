package builder

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/nix"
)

// BenchmarkPublishClosure200 publishes a built 200-derivation chain
// (testdata/chain.nix) through an embedded NATS, every NAR staged and every
// result signed, and reports it against `nix copy --to
// file://DIR?compression=zstd` of the same closure, measured in the same
// run: copy/publish > 1 means publishing is faster. Run with
// -bench PublishClosure200 -benchtime 1x.
func BenchmarkPublishClosure200(b *testing.B) {
	bb := testnix.Busybox(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	n := &nix.Nix{Root: b.TempDir(), Options: offline()}
	drvs, err := n.Instantiate(ctx, "testdata/chain.nix", "", map[string]string{"busybox": bb}, map[string]string{"message": fmt.Sprint(time.Now().UnixNano())})
	if err != nil {
		b.Fatal(err)
	}
	outs, err := n.Realise(ctx, drvs[0])
	if err != nil {
		b.Fatal(err)
	}
	closure, err := n.Requisites(ctx, outs[0])
	if err != nil || len(closure) != 200 {
		b.Fatalf("closure of %d paths, %v", len(closure), err)
	}
	signer := testSigner(b)
	var publish, copying time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c := startQueue(b)
		bl := &Builder{Nix: n, Queue: c, Signer: signer, BuilderID: "bench", Tenant: "t1"}
		b.StartTimer()
		t0 := time.Now()
		pubs, err := bl.PublishClosure(ctx, Target{Installable: attest.Installable{Kind: "drv", Ref: drvs[0]}}, drvs, ClosureOptions{Started: t0, Finished: t0})
		publish += time.Since(t0)
		if err != nil || len(pubs) != 200 {
			b.Fatalf("%d published, %v", len(pubs), err)
		}
		b.StopTimer()
		dir := filepath.Join(b.TempDir(), "cache")
		t1 := time.Now()
		cmd := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command", "copy",
			"--store", n.Root, "--to", "file://"+dir+"?compression=zstd", outs[0])
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("nix copy: %v\n%s", err, out)
		}
		copying += time.Since(t1)
		b.StartTimer()
	}
	b.ReportMetric(publish.Seconds()/float64(b.N), "publish-s/op")
	b.ReportMetric(copying.Seconds()/float64(b.N), "nixcopy-s/op")
	b.ReportMetric(copying.Seconds()/publish.Seconds(), "copy/publish")
}
