package chunked_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/ingest"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/chunked"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cachelayout"
)

// crashChildEnv makes TestCrashMidNAR the writer process: it names the
// cache directory the child writes to.
const crashChildEnv = "PROVENIX_CHUNKED_CRASH_CHILD_DIR"

const crashSize = 16 << 20

// crashNARs: the NAR written before the crash, and the one the killed
// writer was writing, which shares all but one MiB with it.
func crashNARs() (before, killed []byte) {
	return version(crashSize, nil), version(crashSize, map[int]bool{2: true})
}

// TestCrashMidNAR kills (SIGKILL) a process in the middle of ingesting a
// NAR into a chunked store, its first chunks stored, and checks that no
// entry of it is visible, that every chunk list in the store names only
// chunks that exist (the NAR written before it, which shares chunks with
// it, still reads whole), and that gc's chunk step then removes the dead
// writer's leftovers once past the grace, and not before.
func TestCrashMidNAR(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(t, dir)
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	inner := newLocal(t)
	s := wrap(t, inner, chunked.Options{})
	before, _ := crashNARs()
	resBefore := ingestNAR(t, s, before)
	chunksBefore, _ := chunkFiles(t, inner.Dir())

	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashMidNAR$", "-test.count=1")
	child.Env = append(os.Environ(), crashChildEnv+"="+inner.Dir())
	// The child's NAR stops halfway until its stdin closes, which this
	// test never does: however slow the machine, the kill lands mid-NAR.
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var childErr strings.Builder
	child.Stderr = &childErr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	halfway := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "halfway" {
				close(halfway)
			}
		}
	}()
	select {
	case <-halfway:
	case <-ctx.Done():
		t.Fatalf("the writer did not get halfway: %s", childErr.String())
	}
	// Wait until the writer has stored chunks of its own (the changed MiB
	// is in the first half).
	for {
		now, _ := chunkFiles(t, inner.Dir())
		if len(now) > len(chunksBefore) {
			break
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("the writer stored no chunk of its own in time")
		}
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err = child.Wait()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != -1 {
		t.Fatalf("writer was not killed: %v\n%s", err, childErr.String())
	}
	leftover, _ := chunkFiles(t, inner.Dir())
	t.Logf("killed the writer with %d chunks of its own stored", len(leftover)-len(chunksBefore))

	// Nothing of the killed NAR is visible: one NAR, the one before.
	var listed []string
	if err := s.List(ctx, "", func(fi store.Info) error { listed = append(listed, fi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || listed[0] != resBefore.URL {
		t.Errorf("after the kill the store lists %q, want only %s", listed, resBefore.URL)
	}
	checkListsComplete(t, inner.Dir())
	file, err := store.ReadAll(ctx, s, resBefore.URL, 64<<20)
	if err != nil || sha256.Sum256(file) != resBefore.FileHash {
		t.Errorf("the NAR written before the crash: %v", err)
	}

	// gc: within the grace the leftovers stay (a live writer's would),
	// past it they go and the NAR before is untouched.
	if gone, err := s.CollectChunks(ctx, time.Now().Add(-time.Hour), false); err != nil || len(gone) != 0 {
		t.Errorf("CollectChunks within the grace took %d chunks, %v", len(gone), err)
	}
	gone, err := s.CollectChunks(ctx, time.Now().Add(time.Second), false)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := chunkFiles(t, inner.Dir())
	if len(gone) != len(leftover)-len(chunksBefore) || len(after) != len(chunksBefore) {
		t.Errorf("CollectChunks took %d chunks, %d left; want the writer's %d, leaving %d", len(gone), len(after), len(leftover)-len(chunksBefore), len(chunksBefore))
	}
	if file, err := store.ReadAll(ctx, s, resBefore.URL, 64<<20); err != nil || sha256.Sum256(file) != resBefore.FileHash {
		t.Errorf("the NAR written before the crash, after gc: %v", err)
	}
}

// checkListsComplete reads every chunk list in a local store's directory
// and checks that each chunk it names exists with its length.
func checkListsComplete(t *testing.T, dir string) {
	t.Helper()
	lists, _ := filepath.Glob(filepath.Join(dir, "nar", "*"))
	for _, l := range lists {
		b, err := os.ReadFile(l)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		if len(lines) < 2 || lines[0] != "provenix-chunk-list 1" {
			t.Errorf("%s is not a chunk list", l)
			continue
		}
		for _, line := range lines[2:] {
			hx, size, _ := strings.Cut(line, " ")
			fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(cachelayout.ChunkPrefix), hx[:2], hx))
			if n, perr := strconv.ParseInt(size, 10, 64); err != nil || perr != nil || fi.Size() != n {
				t.Errorf("%s names chunk %s (%s bytes): %v", l, hx, size, err)
			}
		}
	}
}

// crashChild is the process the test kills: it ingests the second NAR,
// whose reader stops halfway until stdin closes.
func crashChild(t *testing.T, dir string) {
	inner, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := wrap(t, inner, chunked.Options{})
	_, nar := crashNARs()
	r := io.MultiReader(bytes.NewReader(nar[:crashSize/2]), &announce{}, stdinThen{bytes.NewReader(nar[crashSize/2:])})
	if _, err := ingest.NAR(context.Background(), s, r, ingest.Expect{NarHash: sha256.Sum256(nar), NarSize: crashSize}, ingest.Options{}); err != nil {
		t.Fatal(err)
	}
}

// announce prints "halfway" once read.
type announce struct{}

func (announce) Read([]byte) (int, error) {
	os.Stdout.WriteString("halfway\n")
	return 0, io.EOF
}

// stdinThen waits for stdin to close, then reads r.
type stdinThen struct{ r io.Reader }

func (s stdinThen) Read(p []byte) (int, error) {
	io.Copy(io.Discard, os.Stdin)
	return s.r.Read(p)
}
