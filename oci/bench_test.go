package oci_test

// Benchmarks of the registry against downloading the same NARs from the
// same server, in the same run. They are benchmarks, not timed tests, so
// plain `go test` never runs them:
//
//	go test -run '^$' -bench . -benchtime 3x ./oci/
//
// The data are real files: the Go toolchain of this host (GOROOT) as one
// store path, and 50 of its source directories as a 50-path closure, each
// dumped to a NAR by nix-store. Server, client and the other work on the
// host share its cores, so the ratios are what to compare across runs.

import (
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/internal/testcache"
	"codeberg.org/provenix/provenix/internal/testproc"
)

// benchNAR dumps dir to a NAR and publishes it in the cache directory as
// a new store path named name, referring to refs.
func benchNAR(b *testing.B, cacheDir string, sk signature.SecretKey, dir, name string, refs ...string) *narinfo.NarInfo {
	b.Helper()
	nar, err := exec.Command("nix-store", "--dump", dir).Output()
	if err != nil {
		b.Fatalf("nix-store --dump %s: %v", dir, err)
	}
	return testcache.PublishNAR(b, cacheDir, sk, testcache.StorePath(name), nar, refs...)
}

func benchKey(b *testing.B) signature.SecretKey {
	sk, _, err := signature.GenerateKeypair("bench-1", rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	return sk
}

// BenchmarkPullVsNAR: `crane pull` of the image of one ~256 MiB store path
// (this host's GOROOT) against downloading its NAR from the same server,
// both written to disk. Two baselines: the compressed NAR file as served
// (what curl would fetch), and the NAR as a Nix client takes it
// (cacheclient: fetched, decompressed and checked against its NarHash).
// pull-vs-file and pull-vs-nix are the NAR's time over the pull's (goal ≥
// 0.7: the pull takes at most 1/0.7 of the NAR download's time);
// blob-vs-nix is the same for the layer alone, fetched into a file
// in-process (the server's share of a pull, without crane's).
func BenchmarkPullVsNAR(b *testing.B) {
	craneBin := testproc.Crane(b)
	dir := b.TempDir()
	sk := benchKey(b)
	ni := benchNAR(b, dir, sk, runtime.GOROOT(), "go-toolchain")
	url := serve(b, dir, nil)
	ref := host(url) + "/" + repo(ni.StorePath)
	c, err := cacheclient.New(cacheclient.Options{URL: url})
	if err != nil {
		b.Fatal(err)
	}
	out := b.TempDir()
	// The first pull computes the layer's digest; the benchmark measures
	// pulls of an image whose digests are recorded.
	if o, err := exec.Command(craneBin, "digest", "--insecure", ref).CombinedOutput(); err != nil {
		b.Fatalf("crane digest: %v %s", err, o)
	}
	// What gzip layers would add: compressing the layer as it is served
	// (default level, one core), once.
	layer := layerOf(b, url, ref)
	start := time.Now()
	resp, err := http.Get(url + "/v2/" + repo(ni.StorePath) + "/blobs/" + layer)
	if err != nil {
		b.Fatal(err)
	}
	zw := gzip.NewWriter(io.Discard)
	if _, err := io.Copy(zw, resp.Body); err != nil {
		b.Fatal(err)
	}
	zw.Close()
	resp.Body.Close()
	gz := time.Since(start)
	var pull, file, nix, blob time.Duration
	b.ResetTimer()
	for i := range b.N {
		dst := filepath.Join(out, fmt.Sprint(i))
		start := time.Now()
		if o, err := exec.Command(craneBin, "pull", "--insecure", "--format", "oci", ref, dst).CombinedOutput(); err != nil {
			b.Fatalf("crane pull: %v %s", err, o)
		}
		pull += time.Since(start)
		os.RemoveAll(dst)

		start = time.Now()
		resp, err = http.Get(url + "/" + ni.URL)
		if err != nil {
			b.Fatal(err)
		}
		toFile(b, dst, resp.Body)
		file += time.Since(start)
		os.Remove(dst)

		// The layer as a client without crane's work would take it: the
		// server's share of a pull.
		start = time.Now()
		resp, err = http.Get(url + "/v2/" + repo(ni.StorePath) + "/blobs/" + layer)
		if err != nil {
			b.Fatal(err)
		}
		toFile(b, dst, resp.Body)
		blob += time.Since(start)
		os.Remove(dst)

		start = time.Now()
		r, err := c.NAR(context.Background(), ni)
		if err != nil {
			b.Fatal(err)
		}
		toFile(b, dst, r)
		nix += time.Since(start)
		os.Remove(dst)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(ni.NarSize)/(1<<20), "NAR-MiB")
	b.ReportMetric(float64(ni.FileSize)/(1<<20), "NARzst-MiB")
	b.ReportMetric(pull.Seconds()/n, "pull-s")
	b.ReportMetric(gz.Seconds(), "serve+gzip-s")
	b.ReportMetric(file.Seconds()/n, "file-s")
	b.ReportMetric(nix.Seconds()/n, "nix-s")
	b.ReportMetric(blob.Seconds()/n, "blob-s")
	b.ReportMetric(nix.Seconds()/blob.Seconds(), "blob-vs-nix")
	b.ReportMetric(file.Seconds()/pull.Seconds(), "pull-vs-file")
	b.ReportMetric(nix.Seconds()/pull.Seconds(), "pull-vs-nix")
}

// layerOf is the digest of the last layer of ref's image.
func layerOf(b *testing.B, url, ref string) string {
	b.Helper()
	resp, err := http.Get(url + "/v2/" + strings.SplitN(ref, "/", 2)[1] + "/manifests/latest")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var m struct{ Layers []struct{ Digest string } }
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || len(m.Layers) == 0 {
		b.Fatalf("manifest: %v", err)
	}
	return m.Layers[len(m.Layers)-1].Digest
}

func toFile(b *testing.B, path string, r io.ReadCloser) {
	b.Helper()
	defer r.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, r); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkFirstManifest: the first manifest of a 50-path closure (every
// layer digest computed from its NAR) and a later one, against
// downloading the closure's 50 NARs from the same server as a Nix client
// does (fetched, decompressed, checked against NarHash; as many at once as
// the registry computes). first-vs-nars is the first manifest's time over
// the NARs' (goal ≤ 2); later-ms is a manifest once the digests are
// recorded, from a new server, so not from its memory (goal ≤ 5 ms), and
// cached-ms one from the same server's memory.
func BenchmarkFirstManifest(b *testing.B) {
	src := filepath.Join(runtime.GOROOT(), "src")
	entries, err := os.ReadDir(src)
	if err != nil {
		b.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() && e.Name() != "cmd" && len(dirs) < 50 {
			dirs = append(dirs, filepath.Join(src, e.Name()))
		}
	}
	if len(dirs) != 50 {
		b.Fatalf("%d source directories in %s, want 50", len(dirs), src)
	}
	var first, nars, later, cached time.Duration
	var narBytes uint64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		sk := benchKey(b)
		// A chain: each path refers to the next, so the first's closure
		// is all 50.
		nis := make([]*narinfo.NarInfo, len(dirs))
		for j := len(dirs) - 1; j >= 0; j-- {
			var refs []string
			if j+1 < len(dirs) {
				refs = []string{nis[j+1].StorePath}
			}
			nis[j] = benchNAR(b, dir, sk, dirs[j], "src-"+filepath.Base(dirs[j]), refs...)
		}
		url := serve(b, dir, nil)
		c, err := cacheclient.New(cacheclient.Options{URL: url})
		if err != nil {
			b.Fatal(err)
		}
		manifest := url + "/v2/" + repo(nis[0].StorePath) + "/manifests/latest"
		b.StartTimer()

		start := time.Now()
		downloadAll(b, c, nis, runtime.GOMAXPROCS(0))
		nars += time.Since(start)

		start = time.Now()
		get(b, manifest)
		first += time.Since(start)

		start = time.Now()
		get(b, manifest)
		cached += time.Since(start)

		url2 := serve(b, dir, nil)
		start = time.Now()
		get(b, url2+"/v2/"+repo(nis[0].StorePath)+"/manifests/latest")
		later += time.Since(start)
		if i == 0 {
			for _, ni := range nis {
				narBytes += ni.NarSize
			}
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(narBytes)/(1<<20), "closure-MiB")
	b.ReportMetric(nars.Seconds()*1000/n, "nars-ms")
	b.ReportMetric(first.Seconds()*1000/n, "first-ms")
	b.ReportMetric(first.Seconds()/nars.Seconds(), "first-vs-nars")
	b.ReportMetric(later.Seconds()*1000/n, "later-ms")
	b.ReportMetric(cached.Seconds()*1000/n, "cached-ms")
}

func downloadAll(b *testing.B, c *cacheclient.Client, nis []*narinfo.NarInfo, conc int) {
	b.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	errs := make(chan error, len(nis))
	for _, ni := range nis {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := c.VerifyNAR(context.Background(), ni); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

func get(b *testing.B, url string) {
	b.Helper()
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "layers") {
		b.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
}
