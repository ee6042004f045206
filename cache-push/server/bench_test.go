package server

// Benchmarks of the server over real loopback connections. They are
// benchmarks, not timed tests (see STYLE.md), so plain `go test` never runs
// them:
//
//	go test -run '^$' -bench . -benchtime 1x ./cache-push/server/
//
// Each figure comes with a baseline measured in the same run, and the ratio
// against it: the narinfo load against the same load on an in-memory
// handler, the NAR download against raw loopback TCP. Server and load
// generator share the machine, so absolute figures say as much about the
// host as about the server; the ratios are what to compare across runs.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/local"
)

const (
	benchNarinfos     = 1000
	benchClients      = 64
	benchLoadDuration = 5 * time.Second
	benchWarmup       = time.Second
	benchNARSize      = 256 << 20
)

// BenchmarkNarinfoGET measures narinfo lookups, the request Nix sends most,
// under benchClients concurrent keep-alive clients asking for random
// narinfos out of benchNarinfos. The goal is ≥ 15,000 req/s at p99 ≤ 5 ms.
// When wrk is installed it loads the server twice more, with an independent
// load generator: `wrk -t2 -c64` sharing both cores with the server (the
// wrk-* figures), and `wrk -t1 -c16` with the server held to one core by
// GOMAXPROCS=1 (the split-* figures, also against the in-memory baseline):
// on a 2-core host a load generator that competes with the server for CPU
// measures the kernel's time slices in its p99, not the server.
func BenchmarkNarinfoGET(b *testing.B) {
	s, err := local.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	objs := make(map[string][]byte, benchNarinfos)
	paths := make([]string, 0, benchNarinfos)
	for i := range benchNarinfos {
		key, body := benchNarinfo(b, i)
		if err := store.Put(b.Context(), s, key, bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
		objs["/"+key] = body
		paths = append(paths, "/"+key)
	}
	srv := httptest.NewServer(Handler(s, Options{}))
	defer srv.Close()
	// The baseline: net/http answering the same bytes from memory, no store,
	// no routing. It is the ceiling this load generator reaches on this host.
	mem := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := objs[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}))
	defer mem.Close()

	wrkPath, wrkErr := exec.LookPath("wrk")
	var script string
	if wrkErr != nil {
		b.Log("wrk not installed; skipping the wrk figures")
	} else {
		script = writeWrkScript(b, paths)
	}

	var got, base loadResult
	var wrkRPS, wrkP99, splitRPS, splitP99, splitMemRPS float64
	b.ResetTimer()
	for range b.N {
		base.add(runLoad(b, mem.URL, paths))
		got.add(runLoad(b, srv.URL, paths))
		if wrkErr == nil {
			rps, p99 := runWrk(b, wrkPath, script, srv.URL, 2, 64)
			wrkRPS += rps
			wrkP99 = max(wrkP99, p99)
			procs := runtime.GOMAXPROCS(1)
			rps, p99 = runWrk(b, wrkPath, script, srv.URL, 1, 16)
			splitRPS += rps
			splitP99 = max(splitP99, p99)
			rps, _ = runWrk(b, wrkPath, script, mem.URL, 1, 16)
			splitMemRPS += rps
			runtime.GOMAXPROCS(procs)
		}
	}
	b.StopTimer()

	b.ReportMetric(got.rps(), "req/s")
	b.ReportMetric(got.percentile(50), "p50-ms")
	b.ReportMetric(got.percentile(99), "p99-ms")
	b.ReportMetric(base.rps(), "mem-req/s")
	b.ReportMetric(got.rps()/base.rps(), "vs-mem")
	if wrkErr == nil {
		b.ReportMetric(wrkRPS/float64(b.N), "wrk-req/s")
		b.ReportMetric(wrkP99, "wrk-p99-ms")
		b.ReportMetric(splitRPS/float64(b.N), "split-req/s")
		b.ReportMetric(splitP99, "split-p99-ms")
		b.ReportMetric(splitRPS/splitMemRPS, "split-vs-mem")
	}
}

// benchNarinfo returns the key and text of a valid narinfo for a made-up
// store path, laid out as the pusher writes it.
func benchNarinfo(b *testing.B, i int) (string, []byte) {
	var h [20]byte
	rand.Read(h[:])
	hash := nixbase32.EncodeToString(h[:])
	nar := fmt.Appendf(nil, "nar of package %d", i)
	sum := sha256.Sum256(nar)
	digest := nixhash.MustNewHashWithEncoding(nixhash.SHA256, sum[:], nixhash.NixBase32, true)
	ni := &narinfo.NarInfo{
		StorePath:   fmt.Sprintf("/nix/store/%s-package-%d", hash, i),
		URL:         "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar.zst",
		Compression: "zstd",
		FileHash:    digest,
		FileSize:    uint64(len(nar)),
		NarHash:     digest,
		NarSize:     uint64(len(nar)),
		References:  []string{fmt.Sprintf("%s-package-%d", hash, i)},
	}
	if err := ni.Check(); err != nil {
		b.Fatal(err)
	}
	return hash + ".narinfo", []byte(ni.String())
}

// loadResult accumulates requests and their latencies over load runs.
type loadResult struct {
	requests  int
	elapsed   time.Duration
	latencies []time.Duration
	sorted    bool
}

func (r *loadResult) add(o loadResult) {
	r.requests += o.requests
	r.elapsed += o.elapsed
	r.latencies = append(r.latencies, o.latencies...)
	r.sorted = false
}

func (r *loadResult) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// percentile returns the p-th percentile latency in milliseconds.
func (r *loadResult) percentile(p float64) float64 {
	if len(r.latencies) == 0 {
		return 0
	}
	if !r.sorted {
		slices.Sort(r.latencies)
		r.sorted = true
	}
	i := min(int(float64(len(r.latencies))*p/100), len(r.latencies)-1)
	return float64(r.latencies[i]) / float64(time.Millisecond)
}

// runLoad has benchClients goroutines, each a keep-alive client, GET random
// paths from base for benchWarmup (not recorded) and then for
// benchLoadDuration.
func runLoad(b *testing.B, base string, paths []string) loadResult {
	b.Helper()
	tr := &http.Transport{
		MaxIdleConns:        benchClients,
		MaxIdleConnsPerHost: benchClients,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx := b.Context()

	get := func(path string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return err
		}
		res, err := client.Do(req)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		if _, err := io.Copy(io.Discard, res.Body); err != nil {
			return err
		}
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, res.Status)
		}
		return nil
	}

	start := time.Now()
	measureFrom := start.Add(benchWarmup)
	end := measureFrom.Add(benchLoadDuration)
	lat := make([][]time.Duration, benchClients)
	errs := make([]error, benchClients)
	var wg sync.WaitGroup
	for c := range benchClients {
		wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(c), uint64(start.UnixNano())))
			l := make([]time.Duration, 0, 1<<14)
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				if err := get(paths[rng.IntN(len(paths))]); err != nil {
					errs[c] = err
					return
				}
				if !t0.Before(measureFrom) {
					l = append(l, time.Since(t0))
				}
			}
			lat[c] = l
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	// Requests started before end count; the last ones finish a little
	// after it, so the window runs to the moment all are done.
	res := loadResult{elapsed: time.Since(measureFrom), latencies: slices.Concat(lat...)}
	res.requests = len(res.latencies)
	return res
}

// writeWrkScript writes a wrk Lua script requesting random paths, each wrk
// thread seeded differently.
func writeWrkScript(b *testing.B, paths []string) string {
	b.Helper()
	var sb strings.Builder
	sb.WriteString("local paths = {\n")
	for _, p := range paths {
		fmt.Fprintf(&sb, "  %q,\n", p)
	}
	sb.WriteString(`}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + id)
end
function request()
  return wrk.format("GET", paths[math.random(#paths)])
end
`)
	name := filepath.Join(b.TempDir(), "narinfo.lua")
	if err := os.WriteFile(name, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return name
}

// runWrk runs wrk with threads and conns against url and returns its requests/s and p99 latency in
// milliseconds.
func runWrk(b *testing.B, wrk, script, url string, threads, conns int) (rps, p99 float64) {
	b.Helper()
	out, err := exec.CommandContext(b.Context(), wrk, "-t"+strconv.Itoa(threads), "-c"+strconv.Itoa(conns), "-d5s", "--latency", "-s", script, url).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	rps, p99, err = parseWrk(out)
	if err != nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	return rps, p99
}

// parseWrk reads "Requests/sec:" and the 99% line of the latency
// distribution (wrk --latency) from wrk's report, and fails on non-2xx
// responses or socket errors, which would make the rate meaningless.
func parseWrk(out []byte) (rps, p99 float64, err error) {
	var haveRPS, haveP99 bool
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0:
		case f[0] == "Requests/sec:" && len(f) == 2:
			if rps, err = strconv.ParseFloat(f[1], 64); err != nil {
				return 0, 0, err
			}
			haveRPS = true
		case f[0] == "99%" && len(f) == 2:
			if p99, err = parseWrkDuration(f[1]); err != nil {
				return 0, 0, err
			}
			haveP99 = true
		case f[0] == "Non-2xx" || f[0] == "Socket":
			return 0, 0, fmt.Errorf("failed requests: %s", sc.Text())
		}
	}
	if !haveRPS || !haveP99 {
		return 0, 0, errors.New("no Requests/sec or 99% line in the output")
	}
	return rps, p99, nil
}

// parseWrkDuration parses wrk's latencies ("812.00us", "1.23ms", "2.00s",
// "1.00m") into milliseconds.
func parseWrkDuration(s string) (float64, error) {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"us", 1e-3}, {"ms", 1}, {"s", 1e3}, {"m", 60e3}} {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, fmt.Errorf("latency %q: %w", s, err)
			}
			return v * u.ms, nil
		}
	}
	return 0, fmt.Errorf("latency %q: unknown unit", s)
}

// BenchmarkNARDownload measures one client downloading a benchNARSize NAR
// over loopback, against raw loopback TCP sending the same bytes from
// memory. The goal is a ratio (vs-tcp) of at least 0.7.
func BenchmarkNARDownload(b *testing.B) {
	data := make([]byte, benchNARSize)
	rand.Read(data)
	sum := sha256.Sum256(data)
	key := "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar.zst"
	s, err := local.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	if err := store.Put(b.Context(), s, key, bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(Handler(s, Options{}))
	defer srv.Close()
	raw := newRawServer(b, data)
	defer raw.Close()

	var srvTime, rawTime time.Duration
	b.ResetTimer()
	for i := range b.N {
		// Alternate the order so neither side always runs on a warmer host.
		if i%2 == 0 {
			rawTime += raw.download(b)
			srvTime += downloadNAR(b, srv.URL+"/"+key)
		} else {
			srvTime += downloadNAR(b, srv.URL+"/"+key)
			rawTime += raw.download(b)
		}
	}
	b.StopTimer()

	mb := float64(b.N) * benchNARSize / 1e6
	b.ReportMetric(mb/srvTime.Seconds(), "server-MB/s")
	b.ReportMetric(mb/rawTime.Seconds(), "tcp-MB/s")
	b.ReportMetric(rawTime.Seconds()/srvTime.Seconds(), "vs-tcp")
}

// downloadNAR GETs url with a fresh client, discards the body and returns
// how long it took from dialling to the last byte.
func downloadNAR(b *testing.B, url string) time.Duration {
	b.Helper()
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(b.Context(), http.MethodGet, url, nil)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	res, err := tr.RoundTrip(req)
	if err != nil {
		b.Fatal(err)
	}
	defer res.Body.Close()
	n, err := drain(res.Body)
	d := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || n != benchNARSize {
		b.Fatalf("GET %s: %s, %d bytes, want 200 and %d bytes", url, res.Status, n, benchNARSize)
	}
	return d
}

// drain reads r to the end in 256 KiB reads and counts the bytes. Both
// sides of BenchmarkNARDownload are read the same way, so the ratio
// compares the servers, not two clients: io.Copy into io.Discard would
// read in 8 KiB pieces, and the HTTP client adds its layers to each read.
func drain(r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// rawServer writes data from memory to every connection and closes it: the
// fastest a single loopback TCP stream gets on this host.
type rawServer struct {
	ln   net.Listener
	data []byte
	wg   sync.WaitGroup
}

func newRawServer(b *testing.B, data []byte) *rawServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	r := &rawServer{ln: ln, data: data}
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Go(func() {
				defer c.Close()
				c.Write(r.data)
			})
		}
	})
	return r
}

func (r *rawServer) Close() {
	r.ln.Close()
	r.wg.Wait()
}

func (r *rawServer) download(b *testing.B) time.Duration {
	b.Helper()
	var d net.Dialer
	start := time.Now()
	c, err := d.DialContext(b.Context(), "tcp", r.ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	n, err := drain(c)
	elapsed := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if n != int64(len(r.data)) {
		b.Fatalf("raw TCP: %d bytes, want %d", n, len(r.data))
	}
	return elapsed
}
