package chunked_test

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"codeberg.org/provenix/provenix/cache-push/ingest"
	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/chunked"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/internal/tests3"
)

// dedupDirsEnv names the two directories BenchmarkDedup adds to the Nix
// store as paths, comma-separated: two consecutive versions of one package.
const dedupDirsEnv = "PROVENIX_DEDUP_DIRS"

// dedupSizesEnv, if set, replaces the chunked variants of BenchmarkDedup by
// chunk sizes in KiB: "16-64-256,64-256-1024".
const dedupSizesEnv = "PROVENIX_DEDUP_SIZES"

// BenchmarkDedup stores two versions of a real package, as NARs of store
// paths, in a plain cache (whole zstd NAR files) and in chunked caches
// (this package's default sizes and Attic's), and reports the bytes each
// holds for both versions and the ratio chunked/whole. It needs nix-store
// and PROVENIX_DEDUP_DIRS=old,new, e.g. two Go toolchains:
//
//	GOTOOLCHAIN=go1.27.3 go version   # fetches 1.27.3 into the module cache
//	mkdir /tmp/dedup && cp -a /usr/local/go /tmp/dedup/go-1.26.8 && cp -a $(go env GOMODCACHE)/golang.org/toolchain@v0.0.1-go1.27.3.linux-amd64 /tmp/dedup/go-1.27.3   # store path names may not hold "@"
//	PROVENIX_DEDUP_DIRS=/tmp/dedup/go-1.26.8,/tmp/dedup/go-1.27.3 \
//	  go test -run '^$' -bench Dedup -benchtime 1x ./cache-push/store/chunked/
func BenchmarkDedup(b *testing.B) {
	dirs := strings.Split(os.Getenv(dedupDirsEnv), ",")
	if len(dirs) != 2 {
		b.Skipf("set %s=old,new (two directories)", dedupDirsEnv)
	}
	var paths []string
	for _, d := range dirs {
		out, err := exec.Command("nix-store", "--add", d).Output()
		if err != nil {
			b.Fatalf("nix-store --add %s: %v", d, err)
		}
		paths = append(paths, strings.TrimSpace(string(out)))
	}
	b.Logf("store paths: %s", paths)
	type variant struct {
		name string
		o    *chunked.Options
	}
	variants := []variant{
		{"whole", nil},
		{"chunked", &chunked.Options{}},
		{"chunked-16-64-256", &chunked.Options{MinSize: 16 << 10, AvgSize: 64 << 10, MaxSize: 256 << 10}},
		{"chunked-64-128-256", &chunked.Options{MinSize: 64 << 10, AvgSize: 128 << 10, MaxSize: 256 << 10}},
		{"chunked-zstd-default-level", &chunked.Options{Level: zstd.SpeedDefault}},
		{"chunked-zstd-best-level", &chunked.Options{Level: zstd.SpeedBestCompression}},
	}
	if sizes := os.Getenv(dedupSizesEnv); sizes != "" {
		variants = variants[:1]
		for _, v := range strings.Split(sizes, ",") {
			o := sizesOptions(b, v)
			variants = append(variants, variant{"chunked-" + v, &o})
		}
	}
	for b.Loop() {
		sizes := map[string][2]int64{}
		took := map[string]time.Duration{}
		for _, v := range variants {
			dir := b.TempDir()
			inner, err := local.New(dir)
			if err != nil {
				b.Fatal(err)
			}
			var st store.Store = inner
			if v.o != nil {
				st = wrap(b, inner, *v.o)
			}
			var got [2]int64
			for i, p := range paths {
				start := time.Now()
				ingestPath(b, st, p)
				took[v.name] += time.Since(start)
				got[i] = dirSize(b, dir)
				b.Logf("%s: %s: %d bytes stored after it, %.1fs", v.name, filepath.Base(p), got[i], time.Since(start).Seconds())
			}
			sizes[v.name] = got
		}
		whole := sizes["whole"][1]
		b.ReportMetric(float64(whole), "whole-bytes")
		for _, v := range variants[1:] {
			b.ReportMetric(float64(sizes[v.name][1]), v.name+"-bytes")
			b.ReportMetric(float64(sizes[v.name][1])/float64(whole), v.name+"/whole")
			b.ReportMetric(took[v.name].Seconds()/took["whole"].Seconds(), v.name+"-time/whole")
		}
	}
}

// sizesOptions parses chunk sizes in KiB: "64-128-256".
func sizesOptions(b *testing.B, v string) chunked.Options {
	var lo, avg, hi int
	if _, err := fmt.Sscanf(v, "%d-%d-%d", &lo, &avg, &hi); err != nil {
		b.Fatalf("%q is not MIN-AVG-MAX in KiB", v)
	}
	return chunked.Options{MinSize: lo << 10, AvgSize: avg << 10, MaxSize: hi << 10}
}

// ingestPath dumps a store path and ingests its NAR, as the pusher does.
func ingestPath(b *testing.B, st store.Store, path string) {
	b.Helper()
	nar, err := exec.Command("nix-store", "--dump", path).Output()
	if err != nil {
		b.Fatal(err)
	}
	want := ingest.Expect{NarHash: sha256.Sum256(nar), NarSize: uint64(len(nar))}
	if _, err := ingest.NAR(b.Context(), st, bytes.NewReader(nar), want, ingest.Options{}); err != nil {
		b.Fatal(err)
	}
}

func dirSize(b *testing.B, dir string) int64 {
	b.Helper()
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			fi, _ := d.Info()
			n += fi.Size()
		}
		return nil
	})
	return n
}

// BenchmarkServe fetches the same NAR over HTTP from one cache server, as
// a whole file (stored before chunking) and as chunks, alternately, and
// reports both rates and their ratio. The NAR is 64 MiB of mixed text and
// noise, or the NAR of the store path in PROVENIX_SERVE_PATH. The store is
// local, or S3 (versitygw on loopback) with PROVENIX_SERVE_STORE=s3.
//
//	go test -run '^$' -bench Serve -benchtime 20x -count 5 ./cache-push/store/chunked/
func BenchmarkServe(b *testing.B) {
	var nar []byte
	if p := os.Getenv("PROVENIX_SERVE_PATH"); p != "" {
		var err error
		if nar, err = exec.Command("nix-store", "--dump", p).Output(); err != nil {
			b.Fatal(err)
		}
	} else {
		nar = version(64<<20, nil)
	}
	var srv3 *tests3.Server
	newInner := func(prefix string) store.Store {
		switch os.Getenv("PROVENIX_SERVE_STORE") {
		case "", "local":
			l, err := local.New(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return l
		case "s3":
			if srv3 == nil {
				srv3 = tests3.Start(b)
			}
			return newS3(b, srv3, prefix)
		}
		b.Fatal("PROVENIX_SERVE_STORE: local or s3")
		return nil
	}
	inner := newInner("bench")
	want := ingest.Expect{NarHash: sha256.Sum256(nar), NarSize: uint64(len(nar))}
	whole, err := ingest.NAR(b.Context(), inner, bytes.NewReader(nar), want, ingest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	// The NAR chunked at this package's sizes, and at others in a store
	// of its own: PROVENIX_SERVE_SIZES, else Attic's 64/128/256 KiB (half
	// as many chunks).
	other := cmp.Or(os.Getenv("PROVENIX_SERVE_SIZES"), "64-128-256")
	st := wrap(b, inner, chunked.Options{})
	chunks, err := ingest.NAR(b.Context(), st, bytes.NewReader(nar), want, ingest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	bigInner := newInner("other")
	big := wrap(b, bigInner, sizesOptions(b, other))
	bigChunks, err := ingest.NAR(b.Context(), big, bytes.NewReader(nar), want, ingest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	count := func(s store.Store, key string) float64 {
		list, err := store.ReadAll(b.Context(), s, key, 64<<20)
		if err != nil {
			b.Fatal(err)
		}
		return float64(bytes.Count(list, []byte("\n")) - 2)
	}
	srv := httptest.NewServer(server.Handler(st, server.Options{}))
	defer srv.Close()
	bigSrv := httptest.NewServer(server.Handler(big, server.Options{}))
	defer bigSrv.Close()
	// CPU time (server and client, this process) as well as wall time:
	// on a shared machine, the wall time of a fetch depends on what else
	// runs; what it costs does less.
	cpus := map[string]time.Duration{}
	fetch := func(srv *httptest.Server, url string) time.Duration {
		start, startCPU := time.Now(), testproc.SelfCPU(b)
		defer func() { cpus[url] += testproc.SelfCPU(b) - startCPU }()
		resp, err := http.Get(srv.URL + "/" + url)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %d bytes, status %d, %v", url, n, resp.StatusCode, err)
		}
		return time.Since(start)
	}
	var tWhole, tChunks, tBig time.Duration
	for b.Loop() {
		tWhole += fetch(srv, whole.URL)
		tChunks += fetch(srv, chunks.URL)
		tBig += fetch(bigSrv, bigChunks.URL)
	}
	rate := func(size uint64, d time.Duration) float64 {
		return float64(size) * float64(b.N) / d.Seconds() / 1e6
	}
	rw, rc, rb := rate(whole.FileSize, tWhole), rate(chunks.FileSize, tChunks), rate(bigChunks.FileSize, tBig)
	b.ReportMetric(rw, "whole-MB/s")
	b.ReportMetric(rc, "chunked-MB/s")
	b.ReportMetric(rc/rw, "chunked/whole")
	b.ReportMetric(rb/rw, "chunked-"+other+"/whole")
	b.ReportMetric(float64(cpus[chunks.URL])/float64(cpus[whole.URL]), "chunked-cpu/whole")
	b.ReportMetric(float64(cpus[bigChunks.URL])/float64(cpus[whole.URL]), "chunked-"+other+"-cpu/whole")
	b.ReportMetric(count(inner, chunks.URL), "chunks")
	b.ReportMetric(count(bigInner, bigChunks.URL), "chunks-"+other)
}
