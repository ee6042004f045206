//go:build linux

package main

// Helpers for tests and benchmarks on a real NATS cluster: three Debian
// nats-server processes on loopback, synthetic signed results with small
// NARs, provenix processes run from the test binary, and a count of the
// files renamed into a cache directory (inotify).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/nix-community/go-nix/pkg/nar"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testdrv"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

// natsNode is one nats-server process of a natsCluster.
type natsNode struct {
	name       string
	port       int
	conf       string
	cmd        *exec.Cmd
	log        *testlog.Buffer
	waitResult chan error
}

// natsCluster is a JetStream cluster of Debian nats-server processes on
// loopback, each with its own store directory.
type natsCluster struct {
	t     testing.TB
	bin   string
	nodes []*natsNode
}

// startNATSCluster writes the configuration of n servers, starts them and
// waits until JetStream answers with a meta leader and a client sees all
// n servers.
func startNATSCluster(t testing.TB, n int) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, bin: testnats.Bin(t)}
	dir := t.TempDir()
	cports := make([]int, n)
	var routes []string
	for i := range n {
		cports[i] = testproc.FreePort(t)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", cports[i]))
	}
	for i := range n {
		nd := &natsNode{name: fmt.Sprintf("n%d", i+1), port: testproc.FreePort(t), conf: filepath.Join(dir, fmt.Sprintf("n%d.conf", i+1))}
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
jetstream { store_dir: %q }
cluster {
  name: provenix-test
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, nd.name, nd.port, filepath.Join(dir, nd.name), cports[i], strings.Join(routes, ", "))
		if err := os.WriteFile(nd.conf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, nd)
	}
	for i := range c.nodes {
		c.start(i)
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.kill(i)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := c.connect(ctx)
	defer conn.Close()
	for {
		// Before the meta leader is elected a request gets no answer at all.
		actx, acancel := context.WithTimeout(ctx, time.Second)
		_, err := conn.JetStream().AccountInfo(actx)
		acancel()
		if err == nil && conn.ClusterSize() >= n {
			return c
		}
		if ctx.Err() != nil {
			t.Fatalf("cluster not ready after 30s (JetStream: %v, servers seen: %d)\n%s", err, conn.ClusterSize(), c.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// URL lists every server, so clients reconnect to a survivor.
func (c *natsCluster) URL() string {
	var urls []string
	for _, nd := range c.nodes {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", nd.port))
	}
	return strings.Join(urls, ",")
}

func (c *natsCluster) connect(ctx context.Context) *queue.Conn {
	c.t.Helper()
	conn, err := queue.Connect(ctx, c.URL(), queue.WithName("provenix-test"))
	if err != nil {
		c.t.Fatalf("connect to the cluster: %v", err)
	}
	return conn
}

// start (re)starts node i with its configuration and store.
func (c *natsCluster) start(i int) {
	c.t.Helper()
	nd := c.nodes[i]
	if nd.log == nil {
		nd.log = &testlog.Buffer{}
	}
	nd.cmd = exec.Command(c.bin, "-c", nd.conf)
	nd.cmd.Stdout, nd.cmd.Stderr = nd.log, nd.log
	if err := nd.cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", nd.name, err)
	}
	nd.waitResult = make(chan error, 1)
	go func(cmd *exec.Cmd, ch chan error) { ch <- cmd.Wait() }(nd.cmd, nd.waitResult)
}

// kill sends SIGKILL to node i and waits for it to be gone.
func (c *natsCluster) kill(i int) {
	nd := c.nodes[i]
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Signal(syscall.SIGKILL)
	<-nd.waitResult
	nd.cmd = nil
}

// index returns the index of the node named name (a server_name), or -1.
func (c *natsCluster) index(name string) int {
	for i, nd := range c.nodes {
		if nd.name == name {
			return i
		}
	}
	return -1
}

func (c *natsCluster) logs() string {
	var b strings.Builder
	for _, nd := range c.nodes {
		if nd.log != nil {
			fmt.Fprintf(&b, "--- %s ---\n%s", nd.name, tail(nd.log.String(), 3000))
		}
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// synthResult is one signed result with its NAR, as a builder publishes it.
type synthResult struct {
	path   string
	nar    []byte
	sum    [32]byte
	result *queue.Result
}

// synthStorePath is the output path of the derivation synthDrv(name).
func synthStorePath(name string) string { return synthDrv(name).Out }

// synthDrv is a real derivation called name (without inputs): the
// pusher checks that a result's output is its derivation's.
func synthDrv(name string) *testdrv.Drv {
	d, err := testdrv.New(name, "x86_64-linux")
	if err != nil {
		panic(err)
	}
	return d
}

// stageSynth stages a synthesized result's NAR and its derivation's
// closure export, as a builder does.
func stageSynth(ctx context.Context, conn *queue.Conn, r *queue.Result, nar []byte) error {
	if _, err := conn.Stage(ctx, r.Outputs[0].StagingKey, bytes.NewReader(nar)); err != nil {
		return err
	}
	name := strings.TrimSuffix(path.Base(r.DrvPath), ".drv")[33:]
	_, err := conn.Stage(ctx, r.Closure, bytes.NewReader(synthDrv(name).Export))
	return err
}

// synthResults makes n results of builder up.DefaultBuilderID for tenant
// up.DefaultTenant, each with a unique one-file NAR and a Statement signed
// with signer. tag makes them unique to a run.
func synthResults(t testing.TB, ctx context.Context, signer *attest.Signer, tag string, n int) []synthResult {
	t.Helper()
	out := make([]synthResult, n)
	synthParallel(t, n, func(i int) error {
		content := make([]byte, 256)
		rand.Read(content)
		binary.BigEndian.PutUint64(content, uint64(i))
		r, nar, err := synthesize(ctx, signer, fmt.Sprintf("cluster-%s-%d", tag, i), content)
		if err != nil {
			return err
		}
		out[i] = synthResult{result: r, nar: nar, sum: sha256.Sum256(nar), path: r.Outputs[0].Path}
		return nil
	})
	return out
}

// synthParallel runs one for 0..n-1 on both CPUs (signing dominates) and
// fails t with the first error.
func synthParallel(t testing.TB, n int, one func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w := range 2 {
		wg.Go(func() {
			for i := w; i < n; i += 2 {
				if err := one(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}

// synthesize makes the result a `provenix build` by the default builder
// would publish for a derivation named name whose output is one file with
// content: the NAR written with go-nix's NAR writer, the result staged
// under its NAR hash in the builder's scope (queue.ScopedKey, as builders
// stage), and a Statement signed with signer.
func synthesize(ctx context.Context, signer *attest.Signer, name string, content []byte) (*queue.Result, []byte, error) {
	return synthesizeRefs(ctx, signer, name, content, nil)
}

// synthesizeRefs is synthesize for an output referring to refs.
func synthesizeRefs(ctx context.Context, signer *attest.Signer, name string, content []byte, refs []string) (*queue.Result, []byte, error) {
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		return nil, nil, err
	}
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))}); err != nil {
		return nil, nil, err
	}
	if _, err := w.Write(content); err != nil {
		return nil, nil, err
	}
	if err := w.Close(); err != nil {
		return nil, nil, err
	}
	out := attest.Output{Name: "out", Path: synthStorePath(name), NarHash: sha256.Sum256(buf.Bytes()), NarSize: uint64(buf.Len()), References: refs}
	drv := synthDrv(name).Path
	st, err := attest.NewStatement(&attest.Build{DrvPath: drv, System: "x86_64-linux", BuilderID: up.DefaultBuilderID,
		Installable: attest.Installable{Kind: "drv", Ref: drv}, Outputs: []attest.Output{out}})
	if err != nil {
		return nil, nil, err
	}
	bundle, err := attest.Sign(ctx, st, signer)
	if err != nil {
		return nil, nil, err
	}
	return &queue.Result{Version: queue.ResultVersion, Tenant: up.DefaultTenant, Builder: up.DefaultBuilderID, DrvPath: drv,
		System: "x86_64-linux",
		Outputs: []queue.Output{{Name: "out", Path: out.Path, NarHash: out.NarHashHex(), NarSize: out.NarSize,
			StagingKey: queue.ScopedKey(queue.StagingKey(out.NarHashHex()), up.DefaultBuilderID), References: refs}},
		Bundle: bundle, Closure: queue.ScopedKey(queue.ClosureKey(drv), up.DefaultBuilderID)}, buf.Bytes(), nil
}

// stageAll stages every result's NAR, with a few uploads at once.
func stageAll(t testing.TB, ctx context.Context, conn *queue.Conn, rs []synthResult) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				if err := stageSynth(ctx, conn, rs[i].result, rs[i].nar); err != nil {
					mu.Lock()
					first = cmpOr(first, fmt.Errorf("stage %d: %w", i, err))
					mu.Unlock()
				}
			}
		})
	}
	for i := range rs {
		next <- i
	}
	close(next)
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// provenixProc is a provenix process run from the test binary.
type provenixProc struct {
	cmd  *exec.Cmd
	log  *testlog.Buffer
	done chan error
}

func startProvenix(t testing.TB, log *testlog.Buffer, args ...string) *provenixProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envExecMain+"=1")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &provenixProc{cmd: cmd, log: log, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.signal(syscall.SIGKILL) })
	return p
}

// signal sends sig and waits (up to 30 s) for the process to end.
func (p *provenixProc) signal(sig syscall.Signal) error {
	_ = p.cmd.Process.Signal(sig)
	select {
	case err := <-p.done:
		p.done <- err // later calls see it too
		return err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		return fmt.Errorf("pid %d did not end on %v", p.cmd.Process.Pid, sig)
	}
}

// renameCounter counts, per file name, the files renamed into one
// directory (not its subdirectories) while it runs: the local store puts
// every object in place with a rename, so this counts writes of each key.
type renameCounter struct {
	f    *os.File
	done chan struct{}

	mu       sync.Mutex
	counts   map[string]int
	overflow bool
}

func countRenames(t testing.TB, dir string) *renameCounter {
	t.Helper()
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	if _, err := syscall.InotifyAddWatch(fd, dir, syscall.IN_MOVED_TO|syscall.IN_CLOSE_WRITE); err != nil {
		syscall.Close(fd)
		t.Fatalf("inotify watch %s: %v", dir, err)
	}
	// A non-blocking fd becomes pollable: Close ends a pending Read.
	rc := &renameCounter{f: os.NewFile(uintptr(fd), "inotify"), done: make(chan struct{}), counts: map[string]int{}}
	go rc.read()
	t.Cleanup(rc.stop)
	return rc
}

func (rc *renameCounter) read() {
	defer close(rc.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := rc.f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := string(bytes.TrimRight(buf[off+syscall.SizeofInotifyEvent:off+syscall.SizeofInotifyEvent+int(ev.Len)], "\x00"))
			off += syscall.SizeofInotifyEvent + int(ev.Len)
			rc.mu.Lock()
			switch {
			case ev.Mask&syscall.IN_Q_OVERFLOW != 0:
				rc.overflow = true
			case ev.Mask&syscall.IN_MOVED_TO != 0, ev.Mask&syscall.IN_CLOSE_WRITE != 0 && name != "":
				rc.counts[name]++
			}
			rc.mu.Unlock()
		}
	}
}

func (rc *renameCounter) stop() {
	rc.f.Close()
	<-rc.done
}

// snapshot returns the counts so far and whether events were lost.
func (rc *renameCounter) snapshot() (map[string]int, bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	m := make(map[string]int, len(rc.counts))
	for k, v := range rc.counts {
		m[k] = v
	}
	return m, rc.overflow
}
