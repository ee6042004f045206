package nardiff

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
)

// writeBenchNAR writes a NAR of total bytes of pseudo-random data in
// files of fileSize bytes; when flip, one byte in the middle file differs.
func writeBenchNAR(b *testing.B, path string, total, fileSize int64, flip bool) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	nw, err := nar.NewWriter(bw)
	if err != nil {
		b.Fatal(err)
	}
	nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory})
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, fileSize)
	n := total / fileSize
	for i := range n {
		rng.Read(buf)
		if flip && i == n/2 {
			buf[fileSize/2] ^= 0xff
		}
		if err := nw.WriteHeader(&nar.Header{Path: fmt.Sprintf("/f%06d", i), Type: nar.TypeRegular, Size: fileSize}); err != nil {
			b.Fatal(err)
		}
		nw.Write(buf)
	}
	if err := nw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	f.Close()
}

// BenchmarkDiff diffs two 256 MiB NARs that differ in one file and, in
// the same run, times `cmp -l` of the two NAR files (cmp -l reads both to
// the end, as Diff does). The ratio metric is cmp's time over Diff's: the
// goal is ≥ 0.5. Both read from the page cache after the first round.
// (ns/op and MB/s count cmp and Diff together; see the metrics.)
func BenchmarkDiff(b *testing.B) {
	if _, err := exec.LookPath("cmp"); err != nil {
		b.Fatal("cmp not found: the benchmark compares against it")
	}
	const total = 256 << 20
	for _, c := range []struct {
		fileSize int64
		// pipe hides that the input is a file, as a staged NAR read
		// from NATS is not one: large files are then hashed while
		// compared.
		pipe bool
	}{{1 << 20, false}, {64 << 20, false}, {64 << 20, true}} {
		fileSize := c.fileSize
		name := fmt.Sprintf("files=%dMiB", fileSize>>20)
		if c.pipe {
			name += ",stream"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			pa, pb := filepath.Join(dir, "a.nar"), filepath.Join(dir, "b.nar")
			writeBenchNAR(b, pa, total, fileSize, false)
			writeBenchNAR(b, pb, total, fileSize, true)
			var cmpTime, diffTime time.Duration
			b.SetBytes(2 * total)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				out, err := exec.Command("cmp", "-l", pa, pb).Output()
				cmpTime += time.Since(start)
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || len(out) == 0 {
					b.Fatalf("cmp: %v %s", err, out)
				}
				start = time.Now()
				fa, _ := os.Open(pa)
				fb, _ := os.Open(pb)
				var ra, rb io.Reader = fa, fb
				if c.pipe {
					ra, rb = struct{ io.Reader }{fa}, struct{ io.Reader }{fb}
				}
				r, err := Diff(context.Background(), ra, rb, Options{})
				diffTime += time.Since(start)
				fa.Close()
				fb.Close()
				if err != nil || r.Differing != 1 {
					b.Fatalf("diff: %v, %d differing", err, r.Differing)
				}
			}
			b.ReportMetric(float64(cmpTime)/float64(diffTime), "cmp/diff")
			b.ReportMetric(float64(2*total)/cmpTime.Seconds()*float64(b.N)/(1<<20), "cmpMB/s")
			b.ReportMetric(float64(2*total)/diffTime.Seconds()*float64(b.N)/(1<<20), "diffMB/s")
		})
	}
}
