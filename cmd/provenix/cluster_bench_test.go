//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cache-push/wire"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/up"
)

// benchResults is how many results one measurement pushes.
const benchResults = 3000

// BenchmarkResultsCluster measures results per second through the whole
// pusher path (NATS queue, bundle verification, policy, KV vote, staged
// NAR read, cache write with fsyncs, events) with two pushers sharing one
// durable consumer and one cache directory, configured as `provenix
// cache-push` configures them. Both setups are measured in the same run:
// the embedded single server (R1) and a cluster of three Debian
// nats-server processes (R3). Results are signed and their NARs staged
// before the clock starts; it runs from the first publish (16 concurrent
// builders) until every path's publication event has arrived.
//
// The floor of each server setup is measured in the same run: the same
// results through the same servers, consumed the same way by a handler
// that does only what no push can skip (benchFloorRun: read the staged
// NAR, verify the bundle, write a vote, publish an event, ack; no cache
// file). No pusher on those servers and this machine can pass it,
// whatever it does.
//
//	go test -run '^$' -bench ResultsCluster -benchtime 1x ./cmd/provenix/
func BenchmarkResultsCluster(b *testing.B) {
	ctx := testctx.New(b, 20*time.Minute)
	p, signer := benchDataDir(b)

	srv := testnats.Embedded(b, natsserver.Config{})
	cl := startNATSCluster(b, 3)

	setups := []struct {
		name, url string
		replicas  int
		opts      []local.Option
		floor     bool
		elapsed   time.Duration
		cpu       time.Duration
	}{
		{name: "embedded", url: srv.ClientURL(), replicas: 1},
		{name: "cluster", url: cl.URL(), replicas: 3},
		{name: "embedded-nogroup", url: srv.ClientURL(), replicas: 1, opts: []local.Option{local.WithoutGroupCommit()}},
		{name: "cluster-nogroup", url: cl.URL(), replicas: 3, opts: []local.Option{local.WithoutGroupCommit()}},
		{name: "embedded-syncfs", url: srv.ClientURL(), replicas: 1, opts: []local.Option{local.WithFilesystemFlush()}},
		{name: "embedded-floor", url: srv.ClientURL(), replicas: 1, floor: true},
		{name: "cluster-floor", url: cl.URL(), replicas: 3, floor: true},
	}
	for i := range setups {
		conn, err := queue.Connect(ctx, setups[i].url)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		if err := conn.EnsureStreams(ctx, queue.StreamOptions{}); err != nil {
			b.Fatal(err)
		}
		st, err := conn.JetStream().Stream(ctx, queue.StreamResults)
		if err != nil {
			b.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != setups[i].replicas {
			b.Fatalf("%s: RESULTS has %d replicas, want %d", setups[i].name, r, setups[i].replicas)
		}
	}

	// A first run warms what every run shares (the servers' streams and
	// buckets, the heap), so that it does not count against the first
	// setup measured.
	b.StopTimer()
	benchPushRun(b, ctx, p, signer, setups[0].url)
	b.StartTimer()
	for b.Loop() {
		// Alternate the setups, so that the load of the machine's other
		// work spreads over all of them alike.
		for i := range setups {
			b.StopTimer()
			run := benchPushRun
			if setups[i].floor {
				run = benchFloorRun
			}
			d, cpu := run(b, ctx, p, signer, setups[i].url, setups[i].opts...)
			setups[i].elapsed += d
			setups[i].cpu += cpu
			b.Logf("%s: %.0f results/s, %.2f ms CPU/result (this process), load average %s", setups[i].name,
				benchResults/d.Seconds(), float64(cpu.Microseconds())/1000/benchResults, loadAvg())
			b.StartTimer()
		}
	}
	n := float64(benchResults * b.N)
	rate := func(i int) float64 { return n / setups[i].elapsed.Seconds() }
	b.ReportMetric(rate(0), "embedded-results/s")
	b.ReportMetric(rate(1), "cluster-results/s")
	b.ReportMetric(rate(1)/rate(0), "cluster/embedded")
	// What group commit buys: the same run with every Commit flushing
	// alone, as before it.
	b.ReportMetric(rate(0)/rate(2), "embedded-group/nogroup")
	b.ReportMetric(rate(1)/rate(3), "cluster-group/nogroup")
	// One syncfs per round of group commit instead of an fsync of each
	// file and directory.
	b.ReportMetric(rate(4)/rate(0), "embedded-syncfs/group")
	// How far each is from its floor.
	b.ReportMetric(rate(5), "embedded-floor-results/s")
	b.ReportMetric(rate(6), "cluster-floor-results/s")
	b.ReportMetric(rate(0)/rate(5), "embedded/floor")
	b.ReportMetric(rate(1)/rate(6), "cluster/floor")
	// CPU per result of this process (pushers, publishers and, embedded,
	// the NATS server) varies less than the rate with the machine's
	// other load.
	cpu := func(i int) float64 { return float64(setups[i].cpu.Microseconds()) / 1000 / n }
	b.ReportMetric(cpu(0), "embedded-cpu-ms/result")
	b.ReportMetric(cpu(2), "embedded-nogroup-cpu-ms/result")
	b.ReportMetric(cpu(4), "embedded-syncfs-cpu-ms/result")
	b.ReportMetric(cpu(5), "embedded-floor-cpu-ms/result")
}

// loadAvg is the machine's load average, to report with each figure.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// benchPushRun starts two pushers on url with a fresh cache directory
// (a local store with opts),
// publishes benchResults new results and returns how long it took until
// all were published into the cache, and the CPU time this process spent
// meanwhile.
func benchPushRun(b *testing.B, ctx context.Context, p up.Paths, signer *attest.Signer, url string, opts ...local.Option) (time.Duration, time.Duration) {
	b.Helper()
	pol, err := policy.Load(p.Policy())
	if err != nil {
		b.Fatal(err)
	}
	key, err := cachepush.LoadKey(p.CacheKey())
	if err != nil {
		b.Fatal(err)
	}
	st, err := local.New(filepath.Join(b.TempDir(), "cache"), opts...)
	if err != nil {
		b.Fatal(err)
	}
	conn, rs := benchResultsStaged(b, ctx, signer, url)
	group := "bench" + uniqueMessage(b)[len(b.Name())+1:]
	var pushers []*cachepush.Pusher
	for range 2 {
		pc, err := queue.Connect(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Close()
		pu, err := cachepush.New(cachepush.Config{KV: pc, Rebuilds: pc, Store: st, Policy: pol, CacheKey: key, Staging: pc, Events: pc,
			Heartbeat: queue.DefaultAckWait / 3})
		if err != nil {
			b.Fatal(err)
		}
		if err := pu.Open(ctx, pc, queue.ConsumerOptions{Group: group, FilterSubject: queue.ResultsFilter(up.DefaultTenant),
			Concurrency: wire.DirConcurrency}); err != nil {
			b.Fatal(err)
		}
		pushers = append(pushers, pu)
	}
	defer func() {
		for _, pu := range pushers {
			pu.Close(context.Background())
		}
	}()

	subj, _ := queue.EventsSubject(up.DefaultTenant, queue.EventPublished)
	done := make(chan struct{})
	var mu sync.Mutex
	seen := map[string]bool{}
	sub, err := conn.NATS().Subscribe(subj, func(m *nats.Msg) {
		var pub cachepush.Publication
		if json.Unmarshal(m.Data, &pub) != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !seen[pub.StorePath] {
			seen[pub.StorePath] = true
			if len(seen) == len(rs) {
				close(done)
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	rejected, _ := queue.EventsSubject(up.DefaultTenant, queue.EventRejected)
	rejections := make(chan string, 1)
	rsub, err := conn.NATS().Subscribe(rejected, func(m *nats.Msg) {
		select {
		case rejections <- string(m.Data):
		default:
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer rsub.Unsubscribe()

	start, startCPU := time.Now(), testproc.SelfCPU(b)
	if dir := os.Getenv("PROVENIX_BENCH_STACKS"); dir != "" {
		// Poor man's wall-clock profile: where the handlers wait.
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			buf := make([]byte, 64<<20)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				n := runtime.Stack(buf, true)
				os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%03d.txt", map[bool]string{true: "cluster", false: "embedded"}[strings.Contains(url, ",")], i)), buf[:n], 0o644)
			}
		}()
	}
	publishAll(b, ctx, conn, rs)
	select {
	case <-done:
	case r := <-rejections:
		b.Fatalf("a result was rejected: %s", r)
	case <-time.After(5 * time.Minute):
		mu.Lock()
		defer mu.Unlock()
		b.Fatalf("%d of %d results published after 5 minutes", len(seen), len(rs))
	}
	return time.Since(start), testproc.SelfCPU(b) - startCPU
}

// benchDataDir is a fresh data directory (up.Init) and its builder's
// signer.
func benchDataDir(b *testing.B) (up.Paths, *attest.Signer) {
	b.Helper()
	p := up.Paths{Dir: b.TempDir()}
	if _, err := up.Init(p); err != nil {
		b.Fatal(err)
	}
	signer, err := attest.LoadSigner(p.BuilderKey())
	if err != nil {
		b.Fatal(err)
	}
	return p, signer
}

// benchResultsStaged connects to url (closed with b), and signs and
// stages benchResults new results, to be published on that connection.
// A fresh group per run starts at the stream's first message and must
// not see earlier runs' results: those are purged.
func benchResultsStaged(b *testing.B, ctx context.Context, signer *attest.Signer, url string) (*queue.Conn, []synthResult) {
	b.Helper()
	conn, err := queue.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(conn.Close)
	rs := synthResults(b, ctx, signer, uniqueMessage(b)[len(b.Name())+1:], benchResults)
	stageAll(b, ctx, conn, rs)
	purgeResults(b, ctx, conn)
	return conn, rs
}

// purgeResults empties the RESULTS stream.
func purgeResults(b *testing.B, ctx context.Context, conn *queue.Conn) {
	b.Helper()
	st, err := conn.JetStream().Stream(ctx, queue.StreamResults)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Purge(ctx); err != nil {
		b.Fatal(err)
	}
}

// publishAll publishes rs's results, 16 at a time, as 16 builders
// would.
func publishAll(b *testing.B, ctx context.Context, conn *queue.Conn, rs []synthResult) {
	b.Helper()
	next := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if _, err := conn.PublishResult(ctx, rs[i].result); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := range rs {
		next <- i
	}
	close(next)
	wg.Wait()
}
