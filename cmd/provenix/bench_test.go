package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/cache-push/ingest"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

// writeSemiCompressible fills dir with n bytes in 8 MiB files, half random
// and half repeated text per 4 KiB block: compresses about 2:1, like
// binaries and libraries do.
func writeSemiCompressible(t testing.TB, dir string, n int) {
	t.Helper()
	r := rand.New(rand.NewChaCha8([32]byte{1}))
	text := []byte(strings.Repeat("the quick brown fox jumps over the lazy dog 0123456789\n", 80))[:4096]
	for i := 0; n > 0; i++ {
		size := min(n, 8<<20)
		n -= size
		buf := make([]byte, size)
		for off := 0; off < size; off += 4096 {
			blk := buf[off:min(off+4096, size)]
			if (off/4096)%2 == 0 {
				for j := range blk {
					blk[j] = byte(r.Uint32())
				}
			} else {
				copy(blk, text)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkIngestVsNixCopy pushes one 256 MiB store path into an empty
// cache directory three ways, in the same run: our ingest as the pusher
// does it (read the staged NAR, sha256 it, zstd it on every core, sha256
// the result, write), and `nix copy --to file://DIR?compression=zstd` by
// Debian's Nix on the host and by the newest Nix of the version chroots
// (internal/testnix), each from its own store holding the same path. The
// staged NAR is a file here (the staging store's job is measured by
// queue's BenchmarkStage). speedup-x is a nix copy's time over ours, per
// zstd level; each iteration's times are logged (-v) to show the spread,
// and the three take turns going first.
//
//	go test -run '^$' -bench IngestVsNixCopy -benchtime 3x -v ./cmd/provenix/
func BenchmarkIngestVsNixCopy(b *testing.B) {
	requireNix(b)
	envs := testnix.Versions(b)
	nixes := []*testnix.Env{envs[0], envs[len(envs)-1]} // Debian's, the newest
	ctx := testctx.New(b, 30*time.Minute)
	paths := make([]string, len(nixes))
	for i, env := range nixes {
		src := env.TempDir(b) + "/bench-payload"
		os.MkdirAll(env.HostPath(src), 0o755)
		writeSemiCompressible(b, env.HostPath(src), 256<<20)
		paths[i] = strings.TrimSpace(env.Output(b, ctx, "nix-store", "--add", src))
		if i > 0 && paths[i] != paths[0] {
			b.Fatalf("%s added the payload as %s, %s as %s", nixes[0], paths[0], env, paths[i])
		}
		if i > 0 {
			os.RemoveAll(env.HostPath(src))
		}
	}
	n := &nix.Nix{}
	infos, err := n.PathInfo(ctx, paths[0])
	if err != nil {
		b.Fatal(err)
	}
	info := infos[0]
	staged := filepath.Join(b.TempDir(), "staged.nar")
	f, err := os.Create(staged)
	if err != nil {
		b.Fatal(err)
	}
	if err := n.DumpNAR(f, info); err != nil {
		b.Fatal(err)
	}
	f.Close()
	want := ingest.Expect{NarHash: info.NarHash, NarSize: info.NarSize}
	levels := []struct {
		name string
		o    ingest.Options
	}{{"default", ingest.Options{}}, {"fastest", ingest.Options{Level: zstd.SpeedFastest}}}
	ours := make([]time.Duration, len(levels))
	theirs := make([]time.Duration, len(nixes))
	// CPU time, which the other processes on a busy machine disturb less
	// than the wall clock: ours from this process's rusage (nothing else
	// runs in it meanwhile), nix's from its process's.
	oursCPU := make([]time.Duration, len(levels))
	theirsCPU := make([]time.Duration, len(nixes))
	runOurs := func(i int) time.Duration {
		c0 := testproc.SelfCPU(b)
		defer func() { oursCPU[i] += testproc.SelfCPU(b) - c0 }()
		st, err := local.New(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		f, err := os.Open(staged)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if _, err := ingest.NAR(ctx, st, f, want, levels[i].o); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	runNix := func(i int) time.Duration {
		env := nixes[i]
		dest := env.TempDir(b)
		t0 := time.Now()
		cmd := env.Command(ctx, "nix", "--extra-experimental-features", "nix-command", "copy", "--to", "file://"+dest+"?compression=zstd", paths[i])
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: nix copy: %v\n%s", env, err, out)
		}
		d := time.Since(t0)
		theirsCPU[i] += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		os.RemoveAll(env.HostPath(dest))
		return d
	}
	iter := 0
	for b.Loop() {
		// One turn is ours at every level, then each nix copy; the turns
		// rotate so none always runs first (or after the page cache warmed).
		turns := len(levels) + len(nixes)
		took := make([]time.Duration, turns)
		for k := range turns {
			j := (k + iter) % turns
			if j < len(levels) {
				took[j] = runOurs(j)
				ours[j] += took[j]
			} else {
				took[j] = runNix(j - len(levels))
				theirs[j-len(levels)] += took[j]
			}
		}
		msg := fmt.Sprintf("iteration %d:", iter)
		for i, l := range levels {
			msg += fmt.Sprintf(" ours(%s) %v", l.name, took[i].Round(time.Millisecond))
		}
		for i, env := range nixes {
			d := took[len(levels)+i]
			msg += fmt.Sprintf(" nix-%s %v (%.2fx)", env.Version, d.Round(time.Millisecond), d.Seconds()/took[0].Seconds())
		}
		b.Log(msg)
		iter++
	}
	mb := float64(info.NarSize) / 1e6 * float64(b.N)
	for i, env := range nixes {
		b.ReportMetric(mb/theirs[i].Seconds(), "nix-"+env.Version+"-MB/s")
	}
	for i, l := range levels {
		b.ReportMetric(mb/ours[i].Seconds(), l.name+"-MB/s")
		for j, env := range nixes {
			b.ReportMetric(theirs[j].Seconds()/ours[i].Seconds(), l.name+"-vs-nix-"+env.Version+"-x")
			b.ReportMetric(theirsCPU[j].Seconds()/oursCPU[i].Seconds(), l.name+"-vs-nix-"+env.Version+"-cpu-x")
		}
	}
}

// BenchmarkBuildToNarinfo measures, on the embedded stack, the time from a
// finished Nix build to its narinfo being visible in the cache: hashing
// and staging the NAR, signing, publishing, and the pusher's verification,
// ingest and writes. Builds happen outside the timer, one unique small
// derivation per iteration.
//
//	go test -run '^$' -bench BuildToNarinfo -benchtime 40x ./cmd/provenix/
func BenchmarkBuildToNarinfo(b *testing.B) {
	busybox := requireNix(b)
	ctx := testctx.New(b, 30*time.Minute)
	stack := startStack(b, up.Config{DataDir: b.TempDir()})
	p := stack.Paths()
	signer, err := attest.LoadSigner(p.BuilderKey())
	if err != nil {
		b.Fatal(err)
	}
	conn, err := queue.Connect(ctx, stack.NATSURL(), queue.WithToken(stack.NATSToken()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	nx := &nix.Nix{Options: nix.OfflineOptions()}
	bl := &builder.Builder{Nix: nx, Queue: conn, Signer: signer, BuilderID: up.DefaultBuilderID, Tenant: up.DefaultTenant, StageClosures: true}
	wd, _ := os.Getwd()
	sample := filepath.Join(wd, "..", "..", "examples", "hello.nix")
	var lat []time.Duration
	for b.Loop() {
		b.StopTimer()
		tg := builder.Target{
			Installable: attest.Installable{Kind: "file", File: sample, Attr: "hello"},
			Args:        map[string]string{"busybox": busybox},
			ArgStrs:     map[string]string{"message": uniqueMessage(b)},
		}
		drvs, err := bl.Derivations(ctx, tg)
		if err != nil {
			b.Fatal(err)
		}
		outs, err := nx.Realise(ctx, drvs[0])
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if _, err := bl.Publish(ctx, drvs[0], tg, t0, t0); err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := stack.Store().Stat(ctx, cachelayout.NarinfoKey(outs[0])); err == nil {
				break
			}
			if time.Since(t0) > 30*time.Second {
				b.Fatal("no narinfo after 30s")
			}
			time.Sleep(200 * time.Microsecond)
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.9), "p90-ms")
	b.ReportMetric(pct(1), "max-ms")
}

// BenchmarkQuorumVoteToNarinfo measures, on the embedded stack with
// quorum 2, the time from the quorum-completing vote being on NATS (the
// second builder's Publish returned) to its narinfo being in the cache;
// the baseline in the same run is a quorum-1 path (one vote) measured the
// same way.
//
//	go test -run '^$' -bench QuorumVoteToNarinfo -benchtime 30x ./cmd/provenix/
func BenchmarkQuorumVoteToNarinfo(b *testing.B) {
	busybox := requireNix(b)
	ctx := testctx.New(b, 30*time.Minute)
	dataDir := b.TempDir()
	_, bs := quorumSetup(b, dataDir)
	stack := startStack(b, up.Config{DataDir: dataDir})
	mk := func(q qbuilder) *builder.Builder {
		signer, err := attest.LoadSigner(q.key)
		if err != nil {
			b.Fatal(err)
		}
		return &builder.Builder{Nix: &nix.Nix{Root: q.store, Options: nix.OfflineOptions()}, Queue: stack.Conn(), Signer: signer, BuilderID: q.id, Tenant: up.DefaultTenant, StageClosures: true}
	}
	ba, bb := mk(bs[0]), mk(bs[1])
	wd, _ := os.Getwd()
	sample := filepath.Join(wd, "..", "..", "examples", "hello.nix")
	nondet := filepath.Join(wd, "testdata", "nondet.nix")
	realise := func(bl *builder.Builder, tg builder.Target) (string, string) {
		drvs, err := bl.Derivations(ctx, tg)
		if err != nil {
			b.Fatal(err)
		}
		outs, err := bl.Nix.Realise(ctx, drvs[0])
		if err != nil {
			b.Fatal(err)
		}
		return drvs[0], outs[0]
	}
	visible := func(out string, t0 time.Time) time.Duration {
		for {
			if _, err := stack.Store().Stat(ctx, cachelayout.NarinfoKey(out)); err == nil {
				return time.Since(t0)
			}
			if time.Since(t0) > 30*time.Second {
				b.Fatal("no narinfo after 30s")
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	var quorum, single []time.Duration
	for b.Loop() {
		b.StopTimer()
		msg := uniqueMessage(b)
		tg := builder.Target{Installable: attest.Installable{Kind: "file", File: sample, Attr: "hello"},
			Args: map[string]string{"busybox": busybox}, ArgStrs: map[string]string{"message": msg}}
		drvA, outA := realise(ba, tg)
		if _, err := ba.Publish(ctx, drvA, tg, time.Now(), time.Now()); err != nil {
			b.Fatal(err)
		}
		waitVotes(b, stack.Conn(), outA, 1)
		drvB, _ := realise(bb, tg)
		if _, err := bb.Publish(ctx, drvB, tg, time.Now(), time.Now()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		quorum = append(quorum, visible(outA, time.Now()))
		b.StopTimer()

		solo := builder.Target{Installable: attest.Installable{Kind: "file", File: nondet, Attr: "nondet"},
			Args: map[string]string{"busybox": busybox}, ArgStrs: map[string]string{"name": "solo-bench", "salt": msg}}
		drvS, outS := realise(ba, solo)
		if _, err := ba.Publish(ctx, drvS, solo, time.Now(), time.Now()); err != nil {
			b.Fatal(err)
		}
		single = append(single, visible(outS, time.Now()))
		b.StartTimer()
	}
	p50 := func(d []time.Duration) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[len(d)/2].Microseconds()) / 1000
	}
	q, s := p50(quorum), p50(single)
	b.ReportMetric(q, "quorum-p50-ms")
	b.ReportMetric(s, "single-vote-p50-ms")
	b.ReportMetric(q/s, "ratio")
}
