//go:build linux

package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/queue/server"
)

// stagingBytes is the size of the staging bucket's stream.
func stagingBytes(t *testing.T, c *Conn) uint64 {
	t.Helper()
	str, err := c.js.Stream(testctx.New(t, 30*time.Second), stagingStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(testctx.New(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Bytes
}

// TestStageStorageFull: an embedded server whose JetStream storage limit
// (75 % of a small disk) is reached refuses the staging upload with
// ErrStorageFull, the upload leaves nothing behind, and the same upload
// succeeds once space is freed.
func TestStageStorageFull(t *testing.T) {
	disk := testfs.Tmpfs(t, 4<<20, 0)
	s := startServer(t, server.Config{StoreDir: filepath.Join(disk, "js")})
	c := connect(t, s.ClientURL())
	if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	var staged []string
	var err error
	var key string
	var nar []byte
	for i := 0; ; i++ {
		if i == 10 {
			t.Fatalf("10 uploads of 512 KiB fit a 4 MiB disk")
		}
		key, nar = fmt.Sprintf("k%d", i), make([]byte, 512<<10)
		rand.Read(nar)
		before := stagingBytes(t, c)
		if _, err = c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(nar)); err != nil {
			if after := stagingBytes(t, c); after != before {
				t.Fatalf("the refused upload left %d bytes in the staging stream", int64(after)-int64(before))
			}
			break
		}
		staged = append(staged, key)
	}
	if !errors.Is(err, ErrStorageFull) || !strings.Contains(err.Error(), "JetStream storage full") {
		t.Fatalf("Stage on full storage: %v; want ErrStorageFull", err)
	}
	t.Log(err)
	if _, _, oerr := c.OpenStaged(testctx.New(t, 30*time.Second), key); !errors.Is(oerr, ErrNotFound) {
		t.Fatalf("the refused upload is visible: %v", oerr)
	}
	for _, k := range staged[:2] {
		if err := c.DeleteStaged(testctx.New(t, 30*time.Second), k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Stage(testctx.New(t, 30*time.Second), key, bytes.NewReader(nar)); err != nil {
		t.Fatalf("Stage after space was freed: %v", err)
	}
}

// TestDiskFullUnderJetStream: when the disk itself fills up (the binary
// cache shares it in embedded mode), nats-server stops answering publishes
// to the stream: the publisher gets a timeout that says where to look, the
// Server reports ErrStorageFull, and a restart once space is freed brings
// the stream back with every acked message.
func TestDiskFullUnderJetStream(t *testing.T) {
	disk := testfs.Tmpfs(t, 4<<20, 0)
	storeDir := filepath.Join(disk, "js")
	s := startServer(t, server.Config{StoreDir: storeDir})
	c := connect(t, s.ClientURL())
	if err := c.EnsureStreams(testctx.New(t, 30*time.Second), StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(0)); err != nil {
		t.Fatal(err)
	}
	if err := s.StorageError(); err != nil {
		t.Fatalf("StorageError before the disk filled: %v", err)
	}
	filler := testfs.Fill(t, disk, "filler")

	// The last page of the stream's block file may still take a few.
	acked := 1
	var err error
	for ; acked < 20; acked++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = c.PublishResult(ctx, testResult(acked))
		cancel()
		if err != nil {
			break
		}
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "cannot write its storage") {
		t.Fatalf("publish on a full disk: %v; want a timeout naming storage as a cause", err)
	}
	serr := s.StorageError()
	if !errors.Is(serr, server.ErrStorageFull) || !strings.Contains(serr.Error(), "no space left") {
		t.Fatalf("StorageError on a full disk: %v", serr)
	}
	t.Log(serr)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := s.Close(testctx.New(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	s = startServer(t, server.Config{StoreDir: storeDir})
	c = connect(t, s.ClientURL())
	for i := range acked {
		if dup, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(i)); err != nil || !dup {
			t.Fatalf("result %d, acked before the disk filled, published again after the restart: duplicate %v, %v", i, dup, err)
		}
	}
	if _, err := c.PublishResult(testctx.New(t, 30*time.Second), testResult(100)); err != nil {
		t.Fatalf("publish after space was freed and the server restarted: %v", err)
	}
	if err := s.StorageError(); err != nil {
		t.Fatalf("StorageError after the restart: %v", err)
	}
}
