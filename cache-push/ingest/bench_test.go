package ingest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nar"
)

// benchSize is the NAR size of the throughput benchmarks.
const benchSize = 64 << 20

var benchNAR = sync.OnceValue(func() []byte { return buildNAR(benchSize) })

// buildNAR writes a NAR of size bytes of file content (plus framing) with go-nix's writer: a
// directory of 1 MiB semi-compressible files, like a library output.
func buildNAR(size int) []byte {
	var buf bytes.Buffer
	buf.Grow(size + 1<<20)
	w, err := nar.NewWriter(&buf)
	if err != nil {
		panic(err)
	}
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	must(w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}))
	for i := 0; size > 0; i++ {
		data := semiCompressible(uint64(i), min(size, 1<<20))
		size -= len(data)
		must(w.WriteHeader(&nar.Header{Path: fmt.Sprintf("/f%04d", i), Type: nar.TypeRegular, Size: int64(len(data))}))
		_, err := w.Write(data)
		must(err)
	}
	must(w.Close())
	return buf.Bytes()
}

func BenchmarkNAR(b *testing.B) {
	data := benchNAR()
	want := expectFor(data)
	for _, bc := range []struct {
		name string
		o    Options
	}{
		{"level=default/conc=1", Options{Concurrency: 1}},
		{"level=default/conc=2", Options{Concurrency: 2}},
		{"level=default/conc=GOMAXPROCS", Options{}},
		{"level=fastest/conc=GOMAXPROCS", Options{Level: zstd.SpeedFastest}},
		{"level=better/conc=GOMAXPROCS", Options{Level: zstd.SpeedBetterCompression}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := newStore(b)
			b.SetBytes(int64(len(data)))
			var res Result
			for b.Loop() {
				var err error
				res, err = NAR(b.Context(), s, bytes.NewReader(data), want, bc.o)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(res.NarSize)/float64(res.FileSize), "ratio")
		})
	}
}

// BenchmarkNARSmall measures the fixed cost per NAR (encoder setup, two
// fsyncs, rename), which dominates for the many tiny store paths.
func BenchmarkNARSmall(b *testing.B) {
	data := buildNAR(4 << 10)
	want := expectFor(data)
	s := newStore(b)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := NAR(b.Context(), s, bytes.NewReader(data), want, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBaselineSha256Copy is the floor NAR is compared with: the same
// bytes copied through sha256 into a file, with no compression.
func BenchmarkBaselineSha256Copy(b *testing.B) {
	data := benchNAR()
	dir := b.TempDir()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		f, err := os.Create(filepath.Join(dir, "copy"))
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(f, io.TeeReader(bytes.NewReader(data), h)); err != nil {
			b.Fatal(err)
		}
		h.Sum(nil)
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBaselineZstd is zstd alone at the default level with one
// goroutine, into io.Discard: what NAR costs without hashing and storage.
func BenchmarkBaselineZstd(b *testing.B) {
	data := benchNAR()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		enc.Reset(io.Discard)
		if _, err := enc.Write(data); err != nil {
			b.Fatal(err)
		}
		if err := enc.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBaselineLibraryStream is what the library's own stream encoder
// does with the same NAR, hashed and written to a file like NAR's output:
// one goroutine, and WithConcurrentBlocks (one frame, jobs of four 8 MiB
// windows compressed in parallel). B/op shows why NAR cuts frames itself:
// the jobs' buffers come from sync.Pools the collector empties, so they
// are allocated again and again, and each job holds 32 MiB.
func BenchmarkBaselineLibraryStream(b *testing.B) {
	data := benchNAR()
	for _, bc := range []struct {
		name string
		opts []zstd.EOption
	}{
		{"conc=1", []zstd.EOption{zstd.WithEncoderConcurrency(1)}},
		{"jobs/conc=GOMAXPROCS", []zstd.EOption{zstd.WithConcurrentBlocks(true)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			enc, err := zstd.NewWriter(nil, bc.opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer enc.Close()
			f, err := os.Create(filepath.Join(b.TempDir(), "out.zst"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			var size int64
			for b.Loop() {
				f.Seek(0, io.SeekStart)
				f.Truncate(0)
				fileHash, narHash := sha256.New(), sha256.New()
				cw := &countingWriter{w: io.MultiWriter(f, fileHash)}
				enc.Reset(cw)
				if _, err := io.Copy(enc, io.TeeReader(bytes.NewReader(data), narHash)); err != nil {
					b.Fatal(err)
				}
				if err := enc.Close(); err != nil {
					b.Fatal(err)
				}
				size = int64(cw.n)
			}
			b.ReportMetric(float64(len(data))/float64(size), "ratio")
		})
	}
}
