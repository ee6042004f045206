package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"

	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/internal/testnix"
)

// rssChildEnv makes this test binary a child process that ingests (or,
// for the baseline, only generates and hashes) a synthetic NAR of the given
// size, so its parent can read the child's peak RSS from the kernel.
const (
	rssChildEnv  = "PROVENIX_RSS_CHILD_SIZE"
	rssChildMode = "PROVENIX_RSS_CHILD_MODE"
)

// streamNAR writes a NAR of about size bytes of semi-compressible files to
// w, generated on the fly into one reused buffer: nothing of it is held in
// memory, and it is generated much faster than it is compressed.
func streamNAR(w io.Writer, size int64) error {
	nw, err := nar.NewWriter(w)
	if err != nil {
		return err
	}
	if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}); err != nil {
		return err
	}
	rng := rand.NewChaCha8([32]byte{3})
	text := []byte(strings.Repeat("the of and to in is for nix store path lib bin share include main return\n", 64))[:4<<10]
	buf := make([]byte, 1<<20)
	for i := 0; size > 0; i++ {
		data := buf[:min(size, int64(len(buf)))]
		size -= int64(len(data))
		// Random and text in turns of 4 KiB: about 2:1, like binaries.
		for off := 0; off < len(data); off += 8 << 10 {
			rng.Read(data[off:min(off+4<<10, len(data))])
			if off+4<<10 < len(data) {
				copy(data[off+4<<10:min(off+8<<10, len(data))], text)
			}
		}
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
		// The kernel's peak RSS of this process's own memory. Not the
		// parent's rusage: Go starts a child with vfork, so the child's
		// ru_maxrss counts the parent's RSS at the exec.
		status, err := os.ReadFile("/proc/self/status")
		if err != nil {
			fmt.Fprintln(os.Stderr, "rss child:", err)
			os.Exit(1)
		}
		m := regexp.MustCompile(`(?m)^VmHWM:\s+(\d+) kB$`).FindSubmatch(status)
		if m == nil {
			fmt.Fprintf(os.Stderr, "rss child: no VmHWM in /proc/self/status:\n%s", status)
			os.Exit(1)
		}
		fmt.Printf("VmHWM %s\n", m[1])
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

// rssGOMAXPROCS is the children's GOMAXPROCS: the frames alive, and so
// the memory, grow with it (see Options.Concurrency), and the goal below is
// for a machine of up to this many cores. It is above this machine's 2 so
// that the frames of one NAR still overlap where cores are few.
const rssGOMAXPROCS = 4

// maxPeakRSS is the goal for a process ingesting one NAR of any size.
const maxPeakRSS = 96 << 10 // KiB

// TestPeakRSS: the peak RSS of a process ingesting a 256 MiB and a 2 GiB
// NAR stays under maxPeakRSS, and the larger NAR needs no more than 8 MiB
// over the smaller one's (the rest is the garbage collector's timing):
// memory is flat in the NAR's size. The children are a test binary built
// without the race detector, which would multiply the memory.
func TestPeakRSS(t *testing.T) {
	bin := testnix.GoBuild(t, "ingest.test", "test", "-c", "./cache-push/ingest")
	sizes := []int64{256 << 20, 2 << 30}
	peaks := make([]int64, len(sizes))
	for i, size := range sizes {
		base := childRSS(t, bin, size, "baseline")
		peaks[i] = childRSS(t, bin, size, "ingest")
		t.Logf("%4d MiB NAR: peak RSS %.1f MiB (generating and hashing it alone: %.1f MiB)", size>>20, float64(peaks[i])/1024, float64(base)/1024)
		if peaks[i] > maxPeakRSS {
			t.Errorf("ingesting a %d MiB NAR peaked at %.1f MiB RSS, goal %d MiB", size>>20, float64(peaks[i])/1024, maxPeakRSS>>10)
		}
	}
	if grew := peaks[1] - peaks[0]; grew > 8<<10 {
		t.Errorf("peak RSS grew by %.1f MiB from a 256 MiB to a 2 GiB NAR: memory is not flat in the NAR's size", float64(grew)/1024)
	}
}

// BenchmarkPeakRSS reports the peak RSS of a process ingesting a NAR of
// 256 MiB and 2 GiB, against a baseline process that generates and hashes
// the same stream without ingesting it. Flat in size means streaming.
//
//	go test -run '^$' -bench PeakRSS -benchtime 1x ./cache-push/ingest/
func BenchmarkPeakRSS(b *testing.B) {
	bin := testnix.GoBuild(b, "ingest.test", "test", "-c", "./cache-push/ingest")
	for _, size := range []int64{256 << 20, 2 << 30} {
		b.Run(fmt.Sprintf("size=%dMiB", size>>20), func(b *testing.B) {
			for b.Loop() {
				base := childRSS(b, bin, size, "baseline")
				ing := childRSS(b, bin, size, "ingest")
				b.ReportMetric(float64(ing)/1024, "peak-RSS-MiB")
				b.ReportMetric(float64(base)/1024, "baseline-RSS-MiB")
				b.ReportMetric(float64(ing-base)/1024, "ingest-extra-MiB")
			}
		})
	}
}

// childRSS runs the test binary bin as a child and returns its peak RSS in
// KiB, as the child read it from /proc/self/status (VmHWM).
func childRSS(t testing.TB, bin string, size int64, mode string) int64 {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("the peak RSS is read from Linux's /proc/self/status; this is %s", runtime.GOOS)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), rssChildEnv+"="+strconv.FormatInt(size, 10), rssChildMode+"="+mode,
		"GOMAXPROCS="+strconv.Itoa(rssGOMAXPROCS))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s%s", err, out, stderr.Bytes())
	}
	var kib int64
	if _, err := fmt.Sscanf(string(out), "VmHWM %d\n", &kib); err != nil {
		t.Fatalf("child printed %q: %v", out, err)
	}
	return kib
}
