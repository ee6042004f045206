//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

// crashSeedEnv replays a TestCrashEmbedded run: the test logs its seed.
const crashSeedEnv = "PROVENIX_CRASH_SEED"

const (
	crashResults = 500
	crashKills   = 5
)

// crashItem is one synthetic build result and what its cache entry must be.
type crashItem struct {
	r   *queue.Result
	nar []byte
}

func (c *crashItem) path() string { return c.r.Outputs[0].Path }

// crashItems makes n results a `provenix build` by the data directory's
// local builder would publish: a small NAR of a distinct size and content
// each, and a Statement signed with the builder key `up` trusts.
func crashItems(t *testing.T, ctx context.Context, p up.Paths, rng *rand.Rand, n int) []*crashItem {
	t.Helper()
	signer, err := attest.LoadSigner(p.BuilderKey())
	if err != nil {
		t.Fatal(err)
	}
	items := make([]*crashItem, n)
	sizes := make([]int, n)
	for i := range sizes {
		sizes[i] = 100 + rng.IntN(16<<10)
	}
	synthParallel(t, n, func(i int) error {
		name := fmt.Sprintf("crash-%03d", i)
		content := bytes.Repeat([]byte(name+"\n"), sizes[i]/(len(name)+1)+1)[:sizes[i]]
		r, nar, err := synthesize(ctx, signer, name, content)
		items[i] = &crashItem{r: r, nar: nar}
		return err
	})
	return items
}

// upProcess is `provenix up` running as its own process (the test binary
// re-executed), on fixed ports so clients reconnect to the same address
// after a restart.
type upProcess struct {
	t               *testing.T
	p               up.Paths
	natsAddr, cache string

	cmd  *exec.Cmd
	done chan struct{}   // closed when cmd has been waited for
	log  *testlog.Buffer // the current process's output
	logs []*testlog.Buffer
	// startTimes are how long each start took until up.json named it.
	startTimes []time.Duration
}

func (u *upProcess) start() {
	u.t.Helper()
	cmd := exec.Command(os.Args[0], "up", "--data-dir", u.p.Dir, "--listen", u.cache, "--nats-listen", u.natsAddr, "--log-level", "info")
	cmd.Env = append(os.Environ(), envExecMain+"=1")
	u.log = &testlog.Buffer{}
	u.logs = append(u.logs, u.log)
	cmd.Stdout, cmd.Stderr = u.log, u.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		u.t.Fatal(err)
	}
	u.cmd, u.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(u.done)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if rt, err := up.ReadRuntime(u.p); err == nil && rt.PID == cmd.Process.Pid {
			u.startTimes = append(u.startTimes, time.Since(began))
			return
		}
		select {
		case <-u.done:
			u.t.Fatalf("provenix up (start %d) exited: %v\n%s", len(u.startTimes)+1, cmd.ProcessState, u.log.String())
		default:
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("provenix up (start %d) did not start in 20s:\n%s", len(u.startTimes)+1, u.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// released counts the starts that released deliveries a killed process
// had left unacknowledged.
func (u *upProcess) released() int {
	n := 0
	for _, l := range u.logs {
		if strings.Contains(l.String(), "released results the previous run left unacknowledged") {
			n++
		}
	}
	return n
}

// kill sends SIGKILL and waits until the process is gone.
func (u *upProcess) kill() {
	u.t.Helper()
	if err := u.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		u.t.Fatal(err)
	}
	<-u.done
}

// stop sends SIGTERM and returns the exit status of a clean shutdown.
func (u *upProcess) stop() error {
	if err := u.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-u.done:
	case <-time.After(30 * time.Second):
		return errors.New("provenix up did not stop within 30s of SIGTERM")
	}
	if !u.cmd.ProcessState.Success() {
		return fmt.Errorf("provenix up: %v\n%s", u.cmd.ProcessState, u.log.String())
	}
	return nil
}

// countNarinfos counts the narinfos visible in the local cache directory.
func countNarinfos(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".narinfo") {
			n++
		}
	}
	return n
}

// checkCache checks every narinfo visible in the cache directory as a Nix
// client would, against what the builder attested: it parses, its store
// path is one of ours, its signature verifies with the cache key, its NAR
// exists and decompresses to the attested size and hash, and its
// provenance sidecar holds exactly one bundle. It returns the store paths
// found. A narinfo without its NAR, or with a torn NAR, fails the test.
func checkCache(t *testing.T, dir string, cachePub signature.PublicKey, want map[string]*crashItem) map[string]bool {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	found := map[string]bool{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".narinfo") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		ni, err := narinfo.Parse(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("torn narinfo %s: %v\n%s", e.Name(), err, b)
		}
		it := want[ni.StorePath]
		if it == nil || cachelayout.NarinfoKey(ni.StorePath) != e.Name() {
			t.Fatalf("narinfo %s names %s, not one of the published paths", e.Name(), ni.StorePath)
		}
		if found[ni.StorePath] {
			t.Fatalf("two narinfos for %s", ni.StorePath)
		}
		found[ni.StorePath] = true
		if !signature.VerifyFirst(ni.Fingerprint(), ni.Signatures, []signature.PublicKey{cachePub}) {
			t.Fatalf("narinfo %s: signature does not verify\n%s", e.Name(), b)
		}
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(ni.URL)))
		if err != nil {
			t.Fatalf("narinfo %s visible without its NAR: %v", e.Name(), err)
		}
		if err := dec.Reset(f); err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, dec)
		f.Close()
		if err != nil {
			t.Fatalf("NAR %s of %s is torn: %v", ni.URL, ni.StorePath, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != it.r.Outputs[0].NarHash || uint64(n) != it.r.Outputs[0].NarSize {
			t.Fatalf("NAR %s of %s: sha256 %s, %d bytes; attested %s, %d bytes", ni.URL, ni.StorePath, got, n,
				it.r.Outputs[0].NarHash, it.r.Outputs[0].NarSize)
		}
		sb, err := os.ReadFile(filepath.Join(dir, cachelayout.ProvenanceKey(ni.StorePath)))
		if err != nil {
			t.Fatalf("narinfo %s visible without its provenance: %v", e.Name(), err)
		}
		prov, err := cachelayout.ParseProvenance(sb)
		if err != nil || len(prov.Bundles) != 1 || prov.NarSHA256 != it.r.Outputs[0].NarHash {
			t.Fatalf("provenance of %s: %v, %+v", ni.StorePath, err, prov)
		}
	}
	return found
}

// retry runs f with a short per-attempt timeout until it succeeds,
// counting the failed attempts: across a kill of `up`, staging uploads
// fail (timeout, disconnected) until the restarted server is back. (The
// builder's own retry, in builder.stage, re-dumps the NAR from the store.)
func retry(ctx context.Context, retries *atomic.Int64, f func(ctx context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := f(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		}
		retries.Add(1)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCrashEmbedded: `provenix up` (embedded NATS, pusher, cache) is
// killed with SIGKILL at random moments while a builder publishes 500
// results and while the pusher pushes them, and restarted on the same data
// directory each time. Every result the builder saw acked ends up in the
// cache exactly once, and nothing torn is ever visible.
//
// "Exactly once" here means, all checked:
//   - in the queue: RESULTS holds exactly one message per result, however
//     often the builder retried a publish across a kill (same Nats-Msg-Id;
//     the server rebuilds its duplicate window from the stream on restart);
//   - in the cache: exactly one narinfo per store path, exactly one NAR
//     file per NAR (a redelivered push rewrites the same content-addressed
//     file with the same bytes) and one bundle in each sidecar;
//   - in the decisions: at most one Publication event per path says it
//     was new (Existing=false); a push redone after a kill says Existing;
//   - at the end the pusher group has nothing pending or unacknowledged.
//
// Torn entries: after every kill, with the process dead, every visible
// narinfo is checked as a client would (signature, NAR present,
// decompresses to the attested hash and size, sidecar present). Each
// restart must come up on the killed process's data (JetStream recovery,
// up.json of a dead process not taken for a running one), and the last
// one must shut down cleanly on SIGTERM. Set PROVENIX_CRASH_SEED to replay
// a run's kill points.
func TestCrashEmbedded(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 3*time.Minute)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(crashSeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", crashSeedEnv, s, err)
		}
	}
	t.Logf("seed %d (replay with %s=%d)", seed, crashSeedEnv, seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	// The data directory on a tmpfs: a killed process loses nothing the
	// kernel already has, on tmpfs as on a disk, so the kills test the
	// same thing, and the pushes' fsyncs cost nothing (on this kind of
	// machine the test ran 2-4 times faster; CI runs it with -race).
	p := up.Paths{Dir: filepath.Join(testfs.Tmpfs(t, 256<<20, 0), "data")}
	if _, err := up.Init(p); err != nil {
		t.Fatal(err)
	}
	cachePub, err := signature.ParsePublicKey(readPub(t, p.CachePub()))
	if err != nil {
		t.Fatal(err)
	}
	genStart := time.Now()
	items := crashItems(t, ctx, p, rng, crashResults)
	byPath := make(map[string]*crashItem, len(items))
	for _, it := range items {
		byPath[it.path()] = it
	}
	t.Logf("generated %d signed results in %s", len(items), time.Since(genStart).Round(time.Millisecond))

	u := &upProcess{t: t, p: p, natsAddr: fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t)), cache: fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))}
	t.Cleanup(func() {
		if u.cmd != nil {
			_ = u.cmd.Process.Kill()
			<-u.done
		}
	})
	u.start()

	conn, err := queue.Connect(ctx, "nats://"+u.natsAddr, queue.WithToken(strings.TrimSpace(string(testfs.Read(t, p.NATSToken())))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// The builder: stage each NAR (retried here: a staging upload cut by
	// the kill fails), then publish its result (PublishResult retries).
	var acked, retries, duplicates, slowest atomic.Int64
	pubDone := make(chan error, 1)
	go func() {
		for _, it := range items {
			began := time.Now()
			err := retry(ctx, &retries, func(ctx context.Context) error {
				err := stageSynth(ctx, conn, it.r, it.nar)
				return err
			})
			if err == nil {
				// PublishResult retries by itself, with the same
				// Nats-Msg-Id, across the kill.
				var dup bool
				dup, err = conn.PublishResult(ctx, it.r)
				if dup {
					duplicates.Add(1)
				}
			}
			if err != nil {
				pubDone <- fmt.Errorf("result %s: %w", it.path(), err)
				return
			}
			acked.Add(1)
			if d := int64(time.Since(began)); d > slowest.Load() {
				slowest.Store(d)
			}
		}
		pubDone <- nil
	}()

	// The kill points: the first ones after a random number of acked
	// publishes (the builder mid-stream), the others after a random number
	// of cache entries (the pusher mid-stream); each lands a random 0-40 ms
	// after its trigger, so inside some publish, stage or push.
	cacheDir := p.Cache()
	var whilePublishing, whilePushing int
	for k := range crashKills {
		var trigger func() bool
		if k < crashKills-2 {
			at := int64(k*crashResults/(crashKills-1) + 10 + rng.IntN(crashResults/(crashKills-1)-20))
			trigger = func() bool { return acked.Load() >= at }
		} else {
			from := countNarinfos(cacheDir)
			at := from + 1 + rng.IntN(max(1, (crashResults-from)/2))
			trigger = func() bool { return countNarinfos(cacheDir) >= at }
		}
		for !trigger() {
			if countNarinfos(cacheDir) == crashResults {
				break // nothing left to interrupt
			}
			if ctx.Err() != nil {
				t.Fatalf("kill %d: %v; %d acked, %d in the cache\n%s", k+1, ctx.Err(), acked.Load(), countNarinfos(cacheDir), u.log.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
		u.kill()
		a, pushed := int(acked.Load()), countNarinfos(cacheDir)
		if a < crashResults {
			whilePublishing++
		}
		if pushed < a {
			whilePushing++
		}
		t.Logf("kill %d at %s: %d results acked, %d in the cache", k+1, time.Since(genStart).Round(time.Millisecond), a, pushed)
		checkCache(t, cacheDir, cachePub, byPath)
		if _, err := up.ReadRuntime(p); !errors.Is(err, up.ErrNotRunning) {
			t.Fatalf("after the kill, up.json is taken for a running instance: %v", err)
		}
		time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond) // the builder sees the broker down
		u.start()
		probeDuplicates(t, ctx, conn, items[:acked.Load()], rng)
	}
	if whilePublishing == 0 || whilePushing == 0 {
		t.Fatalf("kills while publishing: %d, while the pusher had work: %d; want both (seed %d)", whilePublishing, whilePushing, seed)
	}

	if err := <-pubDone; err != nil {
		t.Fatalf("builder: %v\n%s", err, u.log.String())
	}
	js := conn.JetStream()
	for {
		n := countNarinfos(cacheDir)
		var info *jetstream.ConsumerInfo
		if c, err := js.Consumer(ctx, queue.StreamResults, queue.ConsumerPrefix+up.DefaultGroup); err == nil {
			info, _ = c.Info(ctx)
		}
		if n == crashResults && info != nil && info.NumPending == 0 && info.NumAckPending == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d results in the cache; consumer %+v\n%s", n, crashResults, info, u.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	t.Logf("all pushed at %s", time.Since(genStart).Round(time.Millisecond))
	found := checkCache(t, cacheDir, cachePub, byPath)
	if len(found) != crashResults {
		t.Fatalf("%d paths in the cache, want %d", len(found), crashResults)
	}
	nars, err := os.ReadDir(filepath.Join(cacheDir, "nar"))
	if err != nil {
		t.Fatal(err)
	}
	if len(nars) != crashResults {
		t.Fatalf("%d NAR files in the cache, want exactly %d (one per NAR)", len(nars), crashResults)
	}
	stream, err := js.Stream(ctx, queue.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	si, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if si.State.Msgs != crashResults {
		t.Fatalf("RESULTS holds %d messages for %d results: the retried publishes were not deduplicated", si.State.Msgs, crashResults)
	}
	first, all := publicationEvents(t, ctx, js)
	for path := range byPath {
		if all[path] == 0 || first[path] > 1 {
			t.Fatalf("%s: %d publication events, %d of them first publications; want at least 1 and at most 1", path, all[path], first[path])
		}
	}
	if u.released() == 0 {
		t.Fatalf("no restart released the deliveries a killed pusher left unacknowledged (seed %d)", seed)
	}

	// A real build through the stack that survived the kills, substituted
	// by stock nix.
	pub := buildSample(t, ctx, busybox, "--data-dir", p.Dir)
	rt, err := up.ReadRuntime(p)
	if err != nil {
		t.Fatal(err)
	}
	waitNarinfo(t, rt.CacheURL, pub.Outputs[0].Path)
	requireSubstitutes(t, ctx, rt.CacheURL, p.CachePub(), pub.Outputs[0])

	if err := u.stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d kills (%d while publishing, %d while pushing, %d released deliveries); %d staging retries, %d duplicate acks, slowest result %s; starts took %v",
		crashKills, whilePublishing, whilePushing, u.released(), retries.Load(), duplicates.Load(), time.Duration(slowest.Load()), u.startTimes)
}

// probeDuplicates publishes again up to 3 random results that were already
// acked, as a builder that lost the ack would: after a restart, the server
// must still know their Nats-Msg-Id and drop them.
func probeDuplicates(t *testing.T, ctx context.Context, conn *queue.Conn, acked []*crashItem, rng *rand.Rand) {
	t.Helper()
	for range min(3, len(acked)) {
		it := acked[rng.IntN(len(acked))]
		dup, err := conn.PublishResult(ctx, it.r)
		if err != nil {
			t.Fatal(err)
		}
		if !dup {
			t.Fatalf("result %s, acked before the kill, published again after the restart: not taken for a duplicate", it.path())
		}
	}
}
