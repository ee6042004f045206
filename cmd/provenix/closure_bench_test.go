package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

// chainNix is a chain of derivations, each output referring to the one
// before it (its path is in $out/prev) and holding ~20 KB of text.
const chainNix = `{ busybox, salt, n }:
let
  bb = builtins.path { name = "busybox"; path = builtins.dirOf busybox;
    filter = p: t: baseNameOf p == baseNameOf busybox; };
  mk = prev: i: derivation {
    name = "chain-${toString i}";
    system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}";
    inherit prev salt;
    args = [ "sh" "-c" ''
      mkdir $out
      echo "$prev" > $out/prev
      i=0; while [ $i -lt 400 ]; do echo "line $i of $out $salt"; i=$((i+1)); done > $out/data
    '' ];
  };
in builtins.foldl' (prev: i: mk prev i) "" (builtins.genList (x: x) n)
`

// BenchmarkClosure200 publishes a 200-path closure end to end (build done
// → every narinfo visible) on the embedded stack: per path, the builder's
// work (dump the NAR, sign and stage 4 at a time; publish the results in
// dependency order, as builders do) and the pusher's (verify, vote, ingest, check references, write
// or wait and release). The baseline in the same run is
// `nix copy --to file://DIR?compression=zstd` of the same closure.
// speedup-x is nix copy's time over ours.
//
//	go test -run '^$' -bench Closure200 -benchtime 3x ./cmd/provenix/
func BenchmarkClosure200(b *testing.B) {
	const n = 200
	busybox := requireNix(b)
	ctx := testctx.New(b, 30*time.Minute)
	dir := b.TempDir()
	expr := filepath.Join(dir, "chain.nix")
	if err := os.WriteFile(expr, []byte(chainNix), 0o644); err != nil {
		b.Fatal(err)
	}
	nx := &nix.Nix{Options: nix.OfflineOptions()}
	t0 := time.Now()
	cmd := exec.CommandContext(ctx, "nix-build", expr, "--no-out-link", "--arg", "busybox", busybox, "--argstr", "salt", uniqueMessage(b),
		"--arg", "n", "200", "--option", "substituters", "", "--option", "build-users-group", "")
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("nix-build chain: %v", err)
	}
	top := strings.TrimSpace(string(out))
	qr, err := exec.CommandContext(ctx, "nix-store", "-qR", top).Output()
	if err != nil {
		b.Fatal(err)
	}
	closure := strings.Fields(string(qr))
	if len(closure) != n {
		b.Fatalf("closure of %s has %d paths, want %d", top, len(closure), n)
	}
	infos, err := nx.PathInfo(ctx, closure...)
	if err != nil {
		b.Fatal(err)
	}
	// Dependency order: follow the chain from the path without references
	// but itself.
	byPath := map[string]nix.PathInfo{}
	next := map[string]string{}
	var first string
	for _, in := range infos {
		byPath[in.Path] = in
		prev := ""
		for _, r := range in.References {
			if r != in.Path {
				prev = r
			}
		}
		if prev == "" {
			first = in.Path
		} else {
			next[prev] = in.Path
		}
	}
	var order []string
	for p := first; p != ""; p = next[p] {
		order = append(order, p)
	}
	if len(order) != n {
		b.Fatalf("chain order has %d paths", len(order))
	}
	b.Logf("built %d-path chain in %s", n, time.Since(t0).Round(time.Millisecond))

	var ours, theirs time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		stack := startStack(b, up.Config{DataDir: b.TempDir()})
		signer, err := attest.LoadSigner(stack.Paths().BuilderKey())
		if err != nil {
			b.Fatal(err)
		}
		conn, err := queue.Connect(ctx, stack.NATSURL(), queue.WithToken(stack.NATSToken()))
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		// Like a builder: one .drv closure export for the chain, then
		// NARs dumped, signed and staged 4 at a time, results published
		// in dependency order as they are ready.
		topDrv := byPath[order[len(order)-1]].Deriver
		reqs, err := nx.Requisites(ctx, topDrv)
		if err != nil {
			b.Fatal(err)
		}
		var export bytes.Buffer
		if err := nx.Export(ctx, &export, reqs...); err != nil {
			b.Fatal(err)
		}
		closureKey := queue.ClosureKey(topDrv)
		if _, err := conn.Stage(ctx, closureKey, &export); err != nil {
			b.Fatal(err)
		}
		ready := make([]chan *queue.Result, n)
		for i := range ready {
			ready[i] = make(chan *queue.Result, 1)
		}
		work := make(chan int)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		for range 4 {
			wg.Go(func() {
				for i := range work {
					r, err := stagePath(ctx, nx, conn, signer, byPath[order[i]], closureKey)
					if err != nil {
						mu.Lock()
						firstErr = cmpOr(firstErr, err)
						mu.Unlock()
					}
					ready[i] <- r
				}
			})
		}
		go func() {
			for i := range order {
				work <- i
			}
			close(work)
		}()
		for i := range order {
			r := <-ready[i]
			if r == nil {
				break
			}
			if _, err := conn.PublishResult(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
		wg.Wait()
		if firstErr != nil {
			b.Fatal(firstErr)
		}
		builderDone := time.Since(start)
		for _, p := range order {
			for {
				if _, err := stack.Store().Stat(ctx, cachelayout.NarinfoKey(p)); err == nil {
					break
				}
				if time.Since(start) > 5*time.Minute {
					b.Fatalf("%s not visible after 5 min", p)
				}
				time.Sleep(time.Millisecond)
			}
		}
		ours += time.Since(start)
		b.StopTimer()
		b.Logf("builders done after %s, all visible after %s; %d of %d paths waited durably", builderDone.Round(time.Millisecond),
			time.Since(start).Round(time.Millisecond), stack.Metrics().Pusher.Status().Waited, n)
		conn.Close()
		dest := b.TempDir()
		b.StartTimer()
		t1 := time.Now()
		cp := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command", "copy", "--to", "file://"+dest+"?compression=zstd", top)
		if out, err := cp.CombinedOutput(); err != nil {
			b.Fatalf("nix copy: %v\n%s", err, out)
		}
		theirs += time.Since(t1)
		b.StopTimer()
		if m, _ := filepath.Glob(filepath.Join(dest, "*.narinfo")); len(m) != n {
			b.Fatalf("nix copy wrote %d narinfos", len(m))
		}
	}
	b.ReportMetric(ours.Seconds()/float64(b.N), "provenix-s")
	b.ReportMetric(theirs.Seconds()/float64(b.N), "nixcopy-s")
	b.ReportMetric(theirs.Seconds()/ours.Seconds(), "speedup-x")
}

// stagePath does a builder's part for one built path but publishing its
// result: NAR, Statement, signature, staging. closureKey names the .drv
// closure export staged for the whole chain (the pusher computes output
// paths from it), as builder.PublishClosure stages one per closure.
func stagePath(ctx context.Context, nx *nix.Nix, conn *queue.Conn, signer *attest.Signer, in nix.PathInfo, closureKey string) (*queue.Result, error) {
	var buf bytes.Buffer
	if err := nx.DumpNAR(&buf, in); err != nil {
		return nil, err
	}
	out := attest.Output{Name: "out", Path: in.Path, NarHash: in.NarHash, NarSize: in.NarSize, References: in.References}
	drv := in.Deriver
	if drv == "" {
		drv = synthStorePath(filepath.Base(in.Path) + ".drv")
	}
	st, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: "x86_64-linux", BuilderID: up.DefaultBuilderID,
		Installable: attest.Installable{Kind: "drv", Ref: drv}, Outputs: []attest.Output{out}})
	if err != nil {
		return nil, err
	}
	bundle, err := attest.Sign(ctx, st, signer)
	if err != nil {
		return nil, err
	}
	key := queue.StagingKey(out.NarHashHex())
	if _, err := conn.Stage(ctx, key, &buf); err != nil {
		return nil, err
	}
	return &queue.Result{Version: queue.ResultVersion, Tenant: up.DefaultTenant, Builder: up.DefaultBuilderID,
		DrvPath: drv, System: "x86_64-linux", Bundle: bundle, Closure: closureKey,
		Outputs: []queue.Output{{Name: "out", Path: in.Path, NarHash: out.NarHashHex(), NarSize: in.NarSize, StagingKey: key, References: in.References}}}, nil
}
