package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/testctx"
)

func TestCollectStaging(t *testing.T) {
	_, c := setup(t)
	ctx := testctx.New(t, 30*time.Second)
	stage := func(key, content string) StagedInfo {
		t.Helper()
		info, err := c.Stage(ctx, key, bytes.NewReader([]byte(content)))
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	// orphan publishes chunks under id with no meta, as an upload
	// interrupted without cleanup leaves them.
	orphan := func(id string) {
		t.Helper()
		for i := range 3 {
			if _, err := c.js.Publish(ctx, stagingChunksPrefix+id, []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	chunkCount := func(id string) uint64 {
		t.Helper()
		_, stream, err := c.staging(ctx)
		if err != nil {
			t.Fatal(err)
		}
		si, err := stream.Info(ctx, jetstream.WithSubjectFilter(stagingChunksPrefix+id))
		if err != nil {
			t.Fatal(err)
		}
		return si.State.Subjects[stagingChunksPrefix+id]
	}

	orphan("OLDORPHAN")
	stage("old-object", "old content")
	time.Sleep(200 * time.Millisecond)
	mid := time.Now()
	time.Sleep(200 * time.Millisecond)
	stage("fresh-object", "fresh content")
	orphan("FRESHORPHAN")

	opts := StagingGCOptions{DryRun: true, Now: time.Now()}
	opts.MaxAge = opts.Now.Sub(mid)
	opts.Grace = opts.MaxAge
	dry, err := c.CollectStaging(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Objects) != 1 || dry.Objects[0].Key != "old-object" || len(dry.Orphans) != 1 || dry.Orphans[0].ID != "OLDORPHAN" || dry.Orphans[0].Chunks != 3 {
		t.Fatalf("dry run report: %+v", dry)
	}
	if chunkCount("OLDORPHAN") != 3 {
		t.Fatal("dry run purged chunks")
	}
	if rc, _, err := c.OpenStaged(ctx, "old-object"); err != nil {
		t.Fatalf("dry run deleted: %v", err)
	} else {
		rc.Close()
	}

	opts.DryRun = false
	rep, err := c.CollectStaging(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Objects) != 1 || len(rep.Orphans) != 1 || rep.Kept != 1 || rep.BytesFreed != uint64(len("old content")) {
		t.Errorf("report: %+v", rep)
	}
	if _, _, err := c.OpenStaged(ctx, "old-object"); !errors.Is(err, ErrNotFound) {
		t.Errorf("old object: %v, want ErrNotFound", err)
	}
	if n := chunkCount("OLDORPHAN"); n != 0 {
		t.Errorf("old orphan has %d chunks left", n)
	}
	if n := chunkCount("FRESHORPHAN"); n != 3 {
		t.Errorf("fresh orphan (an upload in progress) has %d chunks, want 3", n)
	}
	rc, _, err := c.OpenStaged(ctx, "fresh-object")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if b, err := io.ReadAll(rc); err != nil || string(b) != "fresh content" {
		t.Errorf("fresh object: %q, %v", b, err)
	}
}

// TestCollectStagingKeepsEvidence: old staged NARs a dispute's evidence
// record holds survive CollectStaging, until the record is deleted.
func TestCollectStagingKeepsEvidence(t *testing.T) {
	_, c := setup(t)
	ctx := testctx.New(t, 30*time.Second)
	for _, k := range []string{"nar/held-a", "nar/held-b", "nar/loose"} {
		if _, err := c.Stage(ctx, k, bytes.NewReader([]byte("content of "+k))); err != nil {
			t.Fatal(err)
		}
	}
	ev, _ := json.Marshal(Evidence{Tenant: "t1", StorePath: "/nix/store/abc-p", StagingKeys: []string{"nar/held-a", "nar/held-b"}, Since: time.Now()})
	key := EvidenceKey("t1", "/nix/store/abc-p")
	if err := c.KVPut(ctx, BucketWaiting, key, ev); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	opts := StagingGCOptions{MaxAge: time.Millisecond, Now: time.Now().Add(time.Hour)}
	rep, err := c.CollectStaging(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Objects) != 1 || rep.Objects[0].Key != "nar/loose" || rep.Held != 2 {
		t.Fatalf("report %+v: want nar/loose removed and 2 held", rep)
	}
	for _, k := range []string{"nar/held-a", "nar/held-b"} {
		rc, _, err := c.OpenStaged(ctx, k)
		if err != nil {
			t.Fatalf("evidence %s removed: %v", k, err)
		}
		rc.Close()
	}
	// Resolved: the record goes, and so may the NARs.
	if err := c.KVDelete(ctx, BucketWaiting, key); err != nil {
		t.Fatal(err)
	}
	if rep, err = c.CollectStaging(ctx, opts); err != nil || len(rep.Objects) != 2 || rep.Held != 0 {
		t.Fatalf("after release: %+v %v", rep, err)
	}
}

// TestCollectStagingKeepsReupload: an object staged again after
// CollectStaging listed it is not removed with the old one. A scoped key
// names the same chunk subject on every upload, so only its meta tells
// the uploads apart; and an upload after the check survives the purge.
func TestCollectStagingKeepsReupload(t *testing.T) {
	onBothServers(t, testKeepsReupload)
}

func testKeepsReupload(t *testing.T, c *Conn) {
	ctx := testctx.New(t, 30*time.Second)
	obs, stream, err := c.staging(ctx)
	if err != nil {
		t.Fatal(err)
	}
	read := func(key string) string {
		t.Helper()
		rc, _, err := c.OpenStaged(ctx, key)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, key := range []string{ScopedKey("closure/reup", "builder"), "closure/reup-plain"} {
		t.Run(key, func(t *testing.T) {
			if _, err := c.Stage(ctx, key, bytes.NewReader([]byte("old"))); err != nil {
				t.Fatal(err)
			}
			old, err := obs.GetInfo(ctx, key) // as CollectStaging lists it
			if err != nil {
				t.Fatal(err)
			}

			// Staged again before the check.
			if _, err := c.Stage(ctx, key, bytes.NewReader([]byte("new"))); err != nil {
				t.Fatal(err)
			}
			if err := c.deleteIfSame(ctx, stream, old); err == nil {
				t.Error("an object staged again since its listing was deleted")
			}
			if got := read(key); got != "new" {
				t.Fatalf("after the check: %q, want the new upload", got)
			}

			// Staged again after the check: the purge stops at the meta
			// checked.
			cur, err := obs.GetInfo(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			m, err := stream.GetLastMsgForSubject(ctx, metaSubject(key))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Stage(ctx, key, bytes.NewReader([]byte("newer"))); err != nil {
				t.Fatal(err)
			}
			if err := purgeUpTo(ctx, stream, metaSubject(key), m.Sequence+1); err != nil {
				t.Fatal(err)
			}
			if err := purgeChunks(ctx, stream, cur.NUID, m.Sequence+1); err != nil {
				t.Fatal(err)
			}
			if got := read(key); got != "newer" {
				t.Fatalf("after the purge: %q, want the upload made after the check", got)
			}
			// And the unchanged object goes.
			cur, err = obs.GetInfo(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.deleteIfSame(ctx, stream, cur); err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.OpenStaged(ctx, key); !errors.Is(err, ErrNotFound) {
				t.Errorf("deleted object: %v, want ErrNotFound", err)
			}
		})
	}
}

// TestCollectStagingKeepsReused: content Stage handed out again counts as
// staged when it was reused, not when it was first uploaded: the result
// naming it is still to be read.
func TestCollectStagingKeepsReused(t *testing.T) {
	_, c := setup(t)
	ctx := testctx.New(t, 30*time.Second)
	data := []byte("a NAR a builder staged again")
	keys := []string{narKey(data), ScopedKey(narKey(data), "builder")}
	for _, key := range keys {
		if s, err := c.Stage(ctx, key, bytes.NewReader(data)); err != nil || s.Reused {
			t.Fatalf("%s: %+v, %v", key, s, err)
		}
	}
	time.Sleep(2500 * time.Millisecond)
	for _, key := range keys {
		if s, err := c.Stage(ctx, key, bytes.NewReader(data)); err != nil || !s.Reused {
			t.Fatalf("%s staged again: %+v, %v; want it reused", key, s, err)
		}
	}
	rep, err := c.CollectStaging(ctx, StagingGCOptions{MaxAge: 2 * time.Second, Grace: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Objects) != 0 || len(rep.Orphans) != 0 {
		t.Errorf("removed content just reused: %+v", rep)
	}
	for _, key := range keys {
		if got, _ := readStaged(t, c, key); !bytes.Equal(got, data) {
			t.Errorf("%s after GC: %q", key, got)
		}
	}
}
