package ingest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"

	"codeberg.org/provenix/provenix/cache-push/store/local"
)

// rssChildEnv makes this test binary a child process that ingests (or,
// for the baseline, only generates and hashes) a synthetic NAR of the given
// size, so its parent can read the child's peak RSS from the kernel.
const (
	rssChildEnv  = "PROVENIX_RSS_CHILD_SIZE"
	rssChildMode = "PROVENIX_RSS_CHILD_MODE"
)

// streamNAR writes a NAR of about size bytes of semi-compressible files to
// w, generated on the fly: nothing of it is held in memory.
func streamNAR(w io.Writer, size int64) error {
	nw, err := nar.NewWriter(w)
	if err != nil {
		return err
	}
	if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}); err != nil {
		return err
	}
	for i := 0; size > 0; i++ {
		data := semiCompressible(uint64(i), int(min(size, 1<<20)))
		size -= int64(len(data))
		if err := nw.WriteHeader(&nar.Header{Path: fmt.Sprintf("/f%06d", i), Type: nar.TypeRegular, Size: int64(len(data))}); err != nil {
			return err
		}
		if _, err := nw.Write(data); err != nil {
			return err
		}
	}
	return nw.Close()
}

// TestMain makes the test binary the RSS child when the environment says
// so, and runs the tests otherwise.
func TestMain(m *testing.M) {
	if size := os.Getenv(rssChildEnv); size != "" {
		if err := rssChild(size, os.Getenv(rssChildMode)); err != nil {
			fmt.Fprintln(os.Stderr, "rss child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// rssChild generates and hashes a NAR of sizeStr bytes, then (unless mode
// is "baseline") ingests the same stream into a temporary store.
func rssChild(sizeStr, mode string) error {
	size, err := strconv.ParseInt(sizeStr, 10, 64)
	if err != nil {
		return err
	}
	// Pass 1: the expected hash and size, as a signed Statement gives them.
	h := sha256.New()
	cw := &countingWriter{w: h}
	if err := streamNAR(cw, size); err != nil {
		return err
	}
	var want Expect
	copy(want.NarHash[:], h.Sum(nil))
	want.NarSize = cw.n
	if mode == "baseline" {
		return nil
	}
	// Pass 2: ingest the same stream.
	dir, err := os.MkdirTemp("", "provenix-rss-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := local.New(dir)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(streamNAR(pw, size)) }()
	_, err = NAR(context.Background(), st, pr, want, Options{})
	return err
}

// BenchmarkPeakRSS reports the peak RSS of a process ingesting a NAR of
// 256 MiB and 2 GiB, against a baseline process that generates and hashes
// the same stream without ingesting it. Flat in size means streaming.
//
//	go test -run '^$' -bench PeakRSS -benchtime 1x ./cache-push/ingest/
func BenchmarkPeakRSS(b *testing.B) {
	for _, size := range []int64{256 << 20, 2 << 30} {
		b.Run(fmt.Sprintf("size=%dMiB", size>>20), func(b *testing.B) {
			for b.Loop() {
				base := childRSS(b, size, "baseline")
				ing := childRSS(b, size, "ingest")
				b.ReportMetric(float64(ing)/1024, "peak-RSS-MiB")
				b.ReportMetric(float64(base)/1024, "baseline-RSS-MiB")
				b.ReportMetric(float64(ing-base)/1024, "ingest-extra-MiB")
			}
		})
	}
}

// childRSS runs the child and returns its peak RSS in KiB.
func childRSS(b *testing.B, size int64, mode string) int64 {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), rssChildEnv+"="+strconv.FormatInt(size, 10), rssChildMode+"="+mode)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("child: %v\n%s", err, out)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		b.Fatal("no rusage on this platform")
	}
	return int64(ru.Maxrss) // KiB on Linux
}
