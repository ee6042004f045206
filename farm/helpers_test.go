package farm

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

const tenant = "t1"

func connect(t testing.TB, url string) *queue.Conn {
	t.Helper()
	c, err := queue.Connect(testctx.New(t, 10*time.Second), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// setup is an embedded server with the Provenix streams and the farm's
// stream and bucket, and one connection; it returns the server's URL.
func setup(t testing.TB) (string, *queue.Conn) {
	t.Helper()
	srv, c := testqueue.Embedded(t, natsserver.Config{})
	if err := c.EnsureFarm(testctx.New(t, time.Minute), queue.StreamOptions{}); err != nil {
		t.Fatalf("EnsureFarm: %v", err)
	}
	return srv.ClientURL(), c
}

const nix32 = "0123456789abcdfghijklmnpqrsvwxyz"

// fakePath is a well-formed store path, the same for the same name.
func fakePath(name string) string {
	sum := sha256.Sum256([]byte(name))
	h := make([]byte, 32)
	for i := range h {
		h[i] = nix32[int(sum[i%32]+byte(i/32))%32]
	}
	return "/nix/store/" + string(h) + "-" + name
}

// spec is a test graph: name → input names.
type spec map[string][]string

// graphOf makes nodes for a spec, one output "out" each, for system.
func graphOf(t testing.TB, s spec, system string) *Graph {
	t.Helper()
	var nodes []*Node
	for name, ins := range s {
		n := &Node{DrvPath: fakePath(name + ".drv"), System: system, Outputs: map[string]string{"out": fakePath(name)}}
		for _, in := range ins {
			if n.Inputs == nil {
				n.Inputs = map[string][]string{}
			}
			n.Inputs[fakePath(in+".drv")] = []string{"out"}
		}
		nodes = append(nodes, n)
	}
	g, err := NewGraph(nodes)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func nameOf(drv string) string {
	base := drv[len("/nix/store/")+33:]
	return base[:len(base)-len(".drv")]
}

// memCache is the cache as the farm sees it, in memory.
type memCache struct {
	mu sync.Mutex
	m  map[string]bool
}

func newMemCache() *memCache { return &memCache{m: map[string]bool{}} }

func (c *memCache) Has(_ context.Context, p string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[p], nil
}

func (c *memCache) add(p string) {
	c.mu.Lock()
	c.m[p] = true
	c.mu.Unlock()
}

// pusher stands in for cache-push: once a derivation has quorum builds,
// its outputs become visible and a publication event goes out.
type pusher struct {
	conn   *queue.Conn
	cache  *memCache
	quorum int
	// silent: make outputs visible without events (a lost event, or a
	// scheduler that was down).
	mu     sync.Mutex
	silent bool
	votes  map[string]int
	// liar's results are rejected (a NAR that disagrees).
	liar string
}

func (p *pusher) vote(ctx context.Context, r *Request, builder string) error {
	if builder != "" && builder == p.liar {
		return p.conn.PublishEvent(ctx, r.Tenant, queue.EventRejected, map[string]any{"tenant": r.Tenant, "builder": builder,
			"drvPath": r.DrvPath, "reason": "conflict", "error": "NAR differs from the one voted for"})
	}
	p.mu.Lock()
	if p.votes == nil {
		p.votes = map[string]int{}
	}
	p.votes[r.DrvPath]++
	n, silent := p.votes[r.DrvPath], p.silent
	p.mu.Unlock()
	if n != p.quorum {
		return nil
	}
	for _, o := range slices.Sorted(maps.Values(r.Outputs)) {
		p.cache.add(o)
		if silent {
			continue
		}
		if err := p.conn.PublishEvent(ctx, r.Tenant, queue.EventPublished, map[string]any{"tenant": r.Tenant, "storePath": o, "drvPath": r.DrvPath}); err != nil {
			return err
		}
	}
	return nil
}

func (p *pusher) setSilent(v bool) {
	p.mu.Lock()
	p.silent = v
	p.mu.Unlock()
}

// build is one build a test worker did.
type build struct {
	drv, builder, owner string
	replica, attempt    int
	at                  time.Time
	// ready: every output the derivation needs was visible when the
	// request was delivered.
	ready bool
}

// log of builds, shared by a test's workers.
type buildLog struct {
	mu     sync.Mutex
	builds []build
	claims map[string]int // "drv replica attempt" → Claimed count
}

func (l *buildLog) add(b build) {
	l.mu.Lock()
	l.builds = append(l.builds, b)
	l.mu.Unlock()
}

func (l *buildLog) all() []build {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.builds)
}

func (l *buildLog) claimed(r *Request, res ClaimResult) {
	if res != Claimed {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.claims == nil {
		l.claims = map[string]int{}
	}
	l.claims[fmt.Sprintf("%s %d %d", nameOf(r.DrvPath), r.Replica, r.Attempt)]++
}

// testCost is what every test build says it cost.
var testCost = BuildStats{CPUSeconds: 0.25, Wall: 1500 * time.Millisecond}

// testWorker runs a Worker whose builds vote through p, or fail when
// fail says so; it stops at cleanup.
func testWorker(t testing.TB, url string, g *Graph, cache *memCache, p *pusher, log *buildLog, builder, owner string,
	fail func(r *Request, builder string) bool) context.CancelFunc {
	t.Helper()
	conn := connect(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	w := &Worker{Conn: conn, Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: builder, Owner: owner,
		Concurrency: 4, AckWait: 5 * time.Second, OnClaim: log.claimed, Logger: testLogger(t, "worker "+builder),
		Build: func(ctx context.Context, r *Request) (*BuildStats, error) {
			ready := true
			if g != nil {
				for _, n := range g.Needs(r.DrvPath) {
					if ok, _ := cache.Has(ctx, n); !ok {
						ready = false
					}
				}
			}
			log.add(build{drv: nameOf(r.DrvPath), builder: builder, owner: owner, replica: r.Replica, attempt: r.Attempt, at: time.Now(), ready: ready})
			if fail != nil && fail(r, builder) {
				return nil, &BuildError{ExitCode: 1, Log: []string{"error: builder for '" + r.DrvPath + "' failed"}, Stats: testCost}
			}
			return &testCost, p.vote(ctx, r, builder)
		}}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: %v", builder, err)
		}
		done <- nil
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(stop) })
	return func() { once.Do(stop) }
}

// twoWorkers starts a scheduler (group g1) and two workers of distinct
// owners (b1 of o1, b2 of o2) whose builds vote through a quorum-1
// pusher, or fail when fail says so; it returns their build log.
func twoWorkers(t testing.TB, url string, conn *queue.Conn, g *Graph, cache *memCache, fail func(r *Request, builder string) bool) *buildLog {
	t.Helper()
	p := &pusher{conn: conn, cache: cache, quorum: 1}
	log := &buildLog{}
	startScheduler(t, url, cache, "g1")
	testWorker(t, url, g, cache, p, log, "b1", "o1", fail)
	testWorker(t, url, g, cache, p, log, "b2", "o2", fail)
	return log
}

func startScheduler(t testing.TB, url string, cache Cache, group string) *Scheduler {
	t.Helper()
	return startSchedulerWith(t, url, SchedulerConfig{Cache: cache, Group: group})
}

// startSchedulerWith is startScheduler with cfg (Conn, ResyncEvery and
// Logger set here).
func startSchedulerWith(t testing.TB, url string, cfg SchedulerConfig) *Scheduler {
	t.Helper()
	group := cmp.Or(cfg.Group, DefaultGroup)
	cfg.Conn, cfg.ResyncEvery, cfg.Logger = connect(t, url), time.Hour, testLogger(t, "scheduler "+group)
	s, err := NewScheduler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Open(testctx.New(t, time.Minute)); err != nil {
		t.Fatalf("scheduler Open: %v", err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// waitFinished polls the set's status until it is finished.
func waitFinished(t testing.TB, conn *queue.Conn, id string, within time.Duration) *SetStatus {
	t.Helper()
	return waitFinishedEvery(t, conn, id, within, 20*time.Millisecond)
}

// waitFinishedEvery is waitFinished polling every interval: reading a
// large set's status is not free.
func waitFinishedEvery(t testing.TB, conn *queue.Conn, id string, within, interval time.Duration) *SetStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := GetStatus(testctx.New(t, time.Minute), conn, id)
		if err != nil {
			t.Fatal(err)
		}
		if st.Finished() {
			return st
		}
		if time.Now().After(deadline) {
			var unfinished []string
			for _, d := range st.Derivations {
				if !d.Status.Final() {
					b, _ := json.Marshal(d)
					unfinished = append(unfinished, string(b))
				}
			}
			t.Fatalf("set not finished after %s: %s\n%s", within, st, strings.Join(unfinished, "\n"))
		}
		time.Sleep(interval)
	}
}

// testLogger logs into a buffer the test prints when it fails.
func testLogger(t testing.TB, name string) *slog.Logger {
	var buf testlog.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of %s:\n%s", name, buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWorkerFunc runs a Worker with build as its BuildFunc until cleanup.
func testWorkerFunc(t testing.TB, url, builder string, build BuildFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &Worker{Conn: connect(t, url), Tenant: tenant, Machine: Machine{System: "x86_64-linux"}, Builder: builder, Build: build}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: %v", builder, err)
		}
	})
}

// waitReportsHandled waits until the schedulers' consumer of reports has
// handled n of them (acked or terminated), and none is pending.
func waitReportsHandled(t testing.TB, conn *queue.Conn, n uint64) {
	t.Helper()
	waitFor(t, 10*time.Second, func() bool {
		c, err := conn.JetStream().Consumer(testctx.New(t, time.Minute), queue.StreamFarmReports, queue.FarmConsumer(queue.FarmReportFilter))
		if err != nil {
			return false
		}
		info, err := c.Info(testctx.New(t, time.Minute))
		return err == nil && info.Delivered.Stream == n && info.NumAckPending == 0 && info.NumPending == 0
	})
}

// publishFirstReport publishes rep, the set's first report, and returns
// once the scheduler has had it: delivered, and a moment to handle it
// (count, drop or defer it).
func publishFirstReport(t testing.TB, conn *queue.Conn, rep *Report) {
	t.Helper()
	if err := PublishReport(testctx.New(t, time.Minute), conn, rep); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool {
		c, err := conn.JetStream().Consumer(testctx.New(t, time.Minute), queue.StreamFarmReports, queue.FarmConsumer(queue.FarmReportFilter))
		if err != nil {
			return false
		}
		info, err := c.Info(testctx.New(t, time.Minute))
		return err == nil && info.Delivered.Stream >= 1
	})
	time.Sleep(300 * time.Millisecond)
}

// publishReportOn publishes rep on subj with message id msgID, as a
// runner user may with any report on its own subject.
func publishReportOn(t testing.TB, conn *queue.Conn, subj, msgID string, rep *Report) {
	t.Helper()
	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := conn.PublishFarm(testctx.New(t, time.Minute), subj, msgID, data); err != nil {
		t.Fatal(err)
	}
}

// holders are the claims that hold the replicas of a derivation in state
// st on their current attempts, by replica (holdersAt).
func holders(claims []Claim, st *State, failed []string) map[int]*Claim {
	return holdersAt(claims, st, failed, 0)
}
