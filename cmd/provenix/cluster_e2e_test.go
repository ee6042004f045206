//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

// TestClusterChaos is the acceptance test of running on an external NATS
// cluster: three nats-server processes (R3 streams, chosen by default),
// two `provenix cache-push` processes sharing one durable consumer and one
// cache directory, 1,000 signed results published while the RESULTS
// stream's leader and one pusher are killed with SIGKILL at random moments
// and restarted. Afterwards:
//
//   - lost: 0. The RESULTS stream holds exactly 1,000 messages (publishes
//     retried through the election were deduplicated by Nats-Msg-Id), and
//     every one of the 1,000 store paths has its narinfo;
//   - exactly once: each narinfo file was put in place once (counted with
//     inotify: renames into the cache directory, the local store's only
//     way to write), there is no narinfo for any other path, and at most
//     one publication event per path says it was new (the others are
//     redeliveries that found it already there);
//   - torn: 0. Every narinfo is signed by the cache key, its NAR file is
//     there with the narinfo's FileHash and FileSize, and decompressed it
//     has the narinfo's (and the attested) NarHash and NarSize.
func TestClusterChaos(t *testing.T) {
	const total = 1000
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("chaos seed %d", seed)
	ctx := testctx.New(t, 3*time.Minute)
	start := time.Now()

	cl := startNATSCluster(t, 3)
	dataDir := t.TempDir()
	p := up.Paths{Dir: dataDir}
	if _, err := up.Init(p); err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(t.TempDir(), "cache")
	conn := cl.connect(ctx)
	defer conn.Close()
	if got := conn.DefaultReplicas(); got != 3 {
		t.Fatalf("default replicas on a 3-server cluster: %d, want 3", got)
	}
	if err := conn.EnsureStreams(ctx, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{queue.StreamResults, queue.StreamEvents, "OBJ_" + queue.BucketStaging, "KV_" + queue.BucketVotes, "KV_" + queue.BucketBuilders} {
		st, err := conn.JetStream().Stream(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Fatalf("%s has %d replicas, want 3", s, r)
		}
	}

	signer, err := attest.LoadSigner(p.BuilderKey())
	if err != nil {
		t.Fatal(err)
	}
	rs := synthResults(t, ctx, signer, uniqueMessage(t)[len(t.Name())+1:], total)
	stageAll(t, ctx, conn, rs)
	t.Logf("setup (cluster, %d results signed and staged): %s", total, time.Since(start).Round(time.Millisecond))

	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writes := countRenames(t, cacheDir)
	pusherArgs := []string{"cache-push", "--data-dir", dataDir, "--nats-url", cl.URL(), "--dir", cacheDir,
		"--group", "cluster", "--concurrency", "8", "--ack-wait", "4s", "--log-level", "warn"}
	pusherLogs := []*testlog.Buffer{{}, {}}
	pushers := []*provenixProc{startProvenix(t, pusherLogs[0], pusherArgs...), startProvenix(t, pusherLogs[1], pusherArgs...)}
	var pmu sync.Mutex
	failed := func(format string, args ...any) {
		t.Helper()
		pmu.Lock()
		defer pmu.Unlock()
		if dir := os.Getenv("PROVENIX_TEST_DUMP_DIR"); dir != "" {
			// Where live pushers hang: Go prints every goroutine on SIGQUIT.
			for k, pu := range pushers {
				pu.signal(syscall.SIGQUIT)
				os.WriteFile(filepath.Join(dir, fmt.Sprintf("pusher-%d.log", k)), []byte(pusherLogs[k].String()), 0o644)
			}
		}
		t.Fatalf(format+"\npusher 0:\n%s\npusher 1:\n%s\nnats:\n%s", append(args,
			tail(pusherLogs[0].String(), 3000), tail(pusherLogs[1].String(), 3000), cl.logs())...)
	}

	// Publish at about 150 results/s from 4 builders, so the kills land
	// in the middle of the stream of results.
	var published atomic.Int64
	pubErr := make(chan error, 4)
	next := make(chan int)
	var pubs sync.WaitGroup
	for range 4 {
		pubs.Go(func() {
			for i := range next {
				if _, err := conn.PublishResult(ctx, rs[i].result); err != nil {
					pubErr <- fmt.Errorf("publish %d after retries: %w", i, err)
					return
				}
				published.Add(1)
			}
		})
	}
	go func() {
		defer close(next)
		tick := time.NewTicker(time.Second / 150)
		defer tick.Stop()
		for i := range rs {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
			<-tick.C
		}
	}()

	// The chaos: kill the RESULTS leader and, at another random moment,
	// one pusher; restart each a little later.
	// The random moments are drawn here: rng is not safe for concurrent use.
	ms := func(lo, span int) time.Duration { return time.Duration(lo+rng.IntN(span)) * time.Millisecond }
	leaderAt, leaderDown := ms(500, 2000), ms(2000, 2000)
	pusherAt, pusherDown, victim := ms(1000, 4000), ms(500, 1500), rng.IntN(2)
	var chaos sync.WaitGroup
	chaos.Go(func() {
		time.Sleep(leaderAt)
		info, err := conn.JetStream().Stream(ctx, queue.StreamResults)
		if err != nil || info.CachedInfo().Cluster == nil {
			t.Errorf("RESULTS stream info: %v", err)
			return
		}
		leader := info.CachedInfo().Cluster.Leader
		i := cl.index(leader)
		if i < 0 {
			t.Errorf("RESULTS leader %q is none of our servers", leader)
			return
		}
		t.Logf("%s: kill -9 RESULTS leader %s (%d results published)", time.Since(start).Round(time.Millisecond), leader, published.Load())
		cl.kill(i)
		time.Sleep(leaderDown)
		t.Logf("%s: restart %s", time.Since(start).Round(time.Millisecond), leader)
		cl.start(i)
	})
	chaos.Go(func() {
		time.Sleep(pusherAt)
		k := victim
		t.Logf("%s: kill -9 pusher %d (%d results published)", time.Since(start).Round(time.Millisecond), k, published.Load())
		pushers[k].signal(syscall.SIGKILL)
		time.Sleep(pusherDown)
		t.Logf("%s: restart pusher %d", time.Since(start).Round(time.Millisecond), k)
		pmu.Lock()
		pushers[k] = startProvenix(t, pusherLogs[k], pusherArgs...)
		pmu.Unlock()
	})
	pubs.Wait()
	chaos.Wait()
	select {
	case err := <-pubErr:
		failed("%v", err)
	default:
	}
	t.Logf("%s: all %d results published", time.Since(start).Round(time.Millisecond), published.Load())

	// Wait for every narinfo and for the group's consumer to have nothing
	// left: pending or unacknowledged.
	var missing []string
	for {
		missing = missing[:0]
		for _, r := range rs {
			if _, err := os.Stat(filepath.Join(cacheDir, cachelayout.NarinfoKey(r.path))); err != nil {
				missing = append(missing, r.path)
			}
		}
		ci, err := conn.JetStream().Consumer(ctx, queue.StreamResults, queue.ConsumerPrefix+"cluster")
		settled := err == nil && ci.CachedInfo().NumPending == 0 && ci.CachedInfo().NumAckPending == 0
		if len(missing) == 0 && settled {
			break
		}
		if ctx.Err() != nil || time.Since(start) > 150*time.Second {
			var state string
			if err == nil {
				state = fmt.Sprintf("pending %d, ack pending %d, redelivered %d", ci.CachedInfo().NumPending, ci.CachedInfo().NumAckPending, ci.CachedInfo().NumRedelivered)
			}
			failed("%d of %d narinfos missing (e.g. %v); consumer: %s %v", len(missing), total, missing[:min(3, len(missing))], state, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%s: all narinfos written, consumer settled", time.Since(start).Round(time.Millisecond))
	// Stop the pushers cleanly, so nothing is written after the counts.
	for k, pu := range pushers {
		if err := pu.signal(syscall.SIGTERM); err != nil {
			failed("pusher %d did not stop cleanly: %v", k, err)
		}
	}

	// Lost: none.
	st, err := conn.JetStream().Stream(ctx, queue.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != total {
		failed("RESULTS holds %d messages, want exactly %d (one per result: retries deduplicated, none lost)", n, total)
	}

	// Exactly once.
	counts, overflow := writes.snapshot()
	if overflow {
		t.Fatal("inotify queue overflowed: the write counts are incomplete")
	}
	want := map[string]bool{}
	for _, r := range rs {
		want[cachelayout.NarinfoKey(r.path)] = true
	}
	narinfos := 0
	for name, n := range counts {
		if !strings.HasSuffix(name, ".narinfo") {
			continue
		}
		narinfos++
		if !want[name] {
			failed("narinfo %s is for no result we published", name)
		}
		if n != 1 {
			failed("%s was written %d times, want exactly once", name, n)
		}
	}
	if narinfos != total {
		failed("%d narinfos written, want %d", narinfos, total)
	}
	newPubs, allPubs := publicationEvents(t, ctx, conn.JetStream())
	for _, r := range rs {
		if allPubs[r.path] == 0 {
			failed("no publication event for %s", r.path)
		}
		if newPubs[r.path] > 1 {
			failed("%d publication events say %s was new, want at most 1", newPubs[r.path], r.path)
		}
	}
	redelivered := 0
	for _, n := range allPubs {
		redelivered += n - 1
	}

	// Torn: none.
	pub, err := signature.ParsePublicKey(readPub(t, p.CachePub()))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if err := checkEntry(cacheDir, r, pub); err != nil {
			failed("torn entry: %v", err)
		}
	}
	t.Logf("%s: %d results, %d narinfos each written once, %d redeliveries found the entry already there, 0 lost, 0 torn",
		time.Since(start).Round(time.Millisecond), total, narinfos, redelivered)
}

// publicationEvents counts, per store path, the publication events in
// EVENTS that say the path was new, and all of them.
func publicationEvents(t *testing.T, ctx context.Context, js jetstream.JetStream) (fresh, all map[string]int) {
	t.Helper()
	subj, err := queue.EventsSubject(up.DefaultTenant, queue.EventPublished)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(ctx, queue.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
	if err != nil {
		t.Fatal(err)
	}
	fresh, all = map[string]int{}, map[string]int{}
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 {
			return fresh, all
		}
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			var p cachepush.Publication
			if err := json.Unmarshal(m.Data(), &p); err != nil {
				t.Fatalf("publication event: %v", err)
			}
			all[p.StorePath]++
			if !p.Existing {
				fresh[p.StorePath]++
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			t.Fatal(err)
		}
	}
}

// checkEntry checks r's cache entry is whole: the narinfo is the attested
// output's, signed by the cache key, and its NAR file matches it.
func checkEntry(cacheDir string, r synthResult, pub signature.PublicKey) error {
	b, err := os.ReadFile(filepath.Join(cacheDir, cachelayout.NarinfoKey(r.path)))
	if err != nil {
		return err
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%s: narinfo: %w", r.path, err)
	}
	if ni.StorePath != r.path || ni.NarSize != uint64(len(r.nar)) || !bytes.Equal(ni.NarHash.Digest(), r.sum[:]) {
		return fmt.Errorf("%s: narinfo says %s, %d bytes, %x; attested %d bytes, %x", r.path, ni.StorePath, ni.NarSize, ni.NarHash.Digest(), len(r.nar), r.sum)
	}
	signed := false
	for _, s := range ni.Signatures {
		signed = signed || (s.Name == pub.Name && pub.Verify(ni.Fingerprint(), s))
	}
	if !signed {
		return fmt.Errorf("%s: narinfo not signed by the cache key", r.path)
	}
	file, err := os.ReadFile(filepath.Join(cacheDir, ni.URL))
	if err != nil {
		return fmt.Errorf("%s: NAR file: %w", r.path, err)
	}
	fileSum := sha256.Sum256(file)
	if uint64(len(file)) != ni.FileSize || !bytes.Equal(fileSum[:], ni.FileHash.Digest()) {
		return fmt.Errorf("%s: NAR file %s: %d bytes, sha256 %x; narinfo says %d, %x", r.path, ni.URL, len(file), fileSum, ni.FileSize, ni.FileHash.Digest())
	}
	var narBytes []byte
	switch ni.Compression {
	case "zstd":
		d, err := zstd.NewReader(bytes.NewReader(file), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return err
		}
		narBytes, err = io.ReadAll(d)
		d.Close()
		if err != nil {
			return fmt.Errorf("%s: decompress %s: %w", r.path, ni.URL, err)
		}
	case "none", "":
		narBytes = file
	default:
		return fmt.Errorf("%s: unexpected compression %q", r.path, ni.Compression)
	}
	narSum := sha256.Sum256(narBytes)
	if uint64(len(narBytes)) != ni.NarSize || narSum != r.sum {
		return fmt.Errorf("%s: NAR in %s: %d bytes, sha256 %s; narinfo says %d, %x", r.path, ni.URL, len(narBytes), hex.EncodeToString(narSum[:]), ni.NarSize, ni.NarHash.Digest())
	}
	return nil
}
