package s3

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/internal/tests3"
)

// crashChildEnv makes TestCrashMidMultipart the writer process: it names
// the S3 endpoint the child uploads to.
const crashChildEnv = "PROVENIX_S3_CRASH_CHILD_ENDPOINT"

const (
	crashSize    = 64 << 20
	crashNAR     = "nar/crash.nar.zst"
	crashNarinfo = "00000000000000000000000000000000.narinfo"
)

// TestCrashMidMultipart kills (SIGKILL) a process in the middle of a
// multipart upload of a 64 MiB NAR through the store — parts already on the
// server — and checks that nothing shows under the keys it was writing,
// that the crash did leave an incomplete upload behind, and that
// RemoveStale clears it once old enough, and not before.
func TestCrashMidMultipart(t *testing.T) {
	if ep := os.Getenv(crashChildEnv); ep != "" {
		crashChild(t, ep)
		return
	}
	srv := tests3.Start(t)
	s := newStore(t, srv, "tenant", minPartSize)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashMidMultipart$", "-test.count=1")
	child.Env = append(os.Environ(), crashChildEnv+"="+srv.Endpoint)
	// The child commits only after its stdin closes, which this test never
	// does: however slow the machine, the kill lands before the commit.
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
	progress := make(chan string, 128)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			progress <- sc.Text()
		}
		close(progress)
	}()

	// Wait until the server holds at least two parts of the upload.
	var lastProgress string
	for parts := 0; parts < 2; {
		select {
		case line, ok := <-progress:
			if !ok {
				child.Wait()
				t.Fatalf("writer exited before the kill; last said %q\n%s", lastProgress, childErr.String())
			}
			lastProgress = line
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("no parts on the server in time; writer said %q", lastProgress)
		}
		parts = uploadedParts(t, s)
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err = child.Wait()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != -1 {
		t.Fatalf("writer was not killed: %v", err)
	}
	t.Logf("killed the writer after %q", lastProgress)

	for _, k := range []string{crashNAR, crashNarinfo} {
		wantAbsent(t, s, k)
	}
	_, uploads := bucketContents(t, s)
	if len(uploads) == 0 {
		t.Fatal("the crash left no incomplete upload: the kill did not land mid-upload")
	}
	// A young leftover could be a live upload: RemoveStale leaves it.
	if err := s.RemoveStale(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, uploads := bucketContents(t, s); len(uploads) == 0 {
		t.Error("RemoveStale removed an upload younger than its age limit")
	}
	if err := s.RemoveStale(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if objects, uploads := bucketContents(t, s); len(objects)+len(uploads) != 0 {
		t.Errorf("bucket holds %v and uploads %v after RemoveStale, want nothing", objects, uploads)
	}
}

// uploadedParts counts the parts the server holds of incomplete uploads
// under the store's temporary directory.
func uploadedParts(t *testing.T, s *Store) int {
	t.Helper()
	core := minio.Core{Client: s.client}
	n := 0
	for u := range s.client.ListIncompleteUploads(t.Context(), s.bucket, s.prefix+tmpDir, true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		res, err := core.ListObjectParts(t.Context(), s.bucket, u.Key, u.UploadID, 0, 1000)
		if err != nil {
			continue // completed or aborted meanwhile
		}
		n += len(res.ObjectParts)
	}
	return n
}

// crashChild is the process the test kills: it streams crashSize bytes of
// NAR into a Pending, reporting progress on stdout, then waits for stdin to
// close before committing the NAR and its narinfo as the pusher would.
func crashChild(t *testing.T, endpoint string) {
	s, err := New(Options{
		Endpoint: endpoint, Region: tests3.Region, Bucket: "cache", Prefix: "tenant",
		AccessKey: tests3.AccessKey, SecretKey: tests3.SecretKey, InsecureHTTPUnsafe: true, PartSize: minPartSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := s.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	src := io.LimitReader(rand.NewChaCha8([32]byte{1}), crashSize)
	buf := make([]byte, 1<<20)
	for written := 0; ; {
		n, rerr := io.ReadFull(src, buf)
		if n > 0 {
			if _, err := p.Write(buf[:n]); err != nil {
				t.Fatal(err)
			}
			written += n
			fmt.Printf("wrote %d\n", written)
		}
		if rerr != nil {
			break
		}
	}
	fmt.Println("waiting for stdin to close before commit")
	io.Copy(io.Discard, os.Stdin)
	if err := p.Commit(ctx, crashNAR); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, s, crashNarinfo, strings.NewReader("URL: "+crashNAR+"\n")); err != nil {
		t.Fatal(err)
	}
}
