package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
)

func TestKV(t *testing.T) {
	_, c := setup(t)
	ctx := context.Background()
	k1 := VoteKey("default", "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello", "builder-a")
	k2 := VoteKey("default", "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello", "builder b/ü")
	other := VoteKey("default", "/nix/store/zzzz456789abcdfghijklmnpqrsvwxyz-hello", "builder-a")
	for k, v := range map[string]string{k1: "a", k2: "b", other: "c"} {
		if err := c.KVPut(ctx, BucketVotes, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.KVList(ctx, BucketVotes, VotePrefix("default", "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello"))
	if err != nil || len(got) != 2 || string(got[k1]) != "a" || string(got[k2]) != "b" {
		t.Fatalf("list: %v %v", got, err)
	}
	if _, err := c.KVGet(ctx, BucketVotes, "default.nope.x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	// Concurrent increments through compare-and-set lose nothing.
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.KVUpdate(ctx, BucketBuilders, "counter", func(old []byte) ([]byte, error) {
				return append(old, 'x'), nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	v, err := c.KVGet(ctx, BucketBuilders, "counter")
	if err != nil || len(v) != 20 {
		t.Fatalf("counter %q %v", v, err)
	}
}

// TestKVUpdateAt: a value stored at the revision KVCreate returned
// replaces it; once anyone else changed or deleted the key, it is refused
// and the other's value stays.
func TestKVUpdateAt(t *testing.T) {
	_, c := setup(t)
	ctx := context.Background()
	rev, err := c.KVCreate(ctx, BucketVotes, "default.at.a", []byte("first"))
	if err != nil || rev == 0 {
		t.Fatalf("create: rev %d, %v", rev, err)
	}
	if _, err := c.KVCreate(ctx, BucketVotes, "default.at.a", []byte("again")); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second create: %v", err)
	}
	if err := c.KVUpdateAt(ctx, BucketVotes, "default.at.a", []byte("mine"), rev); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.KVGet(ctx, BucketVotes, "default.at.a"); string(v) != "mine" {
		t.Fatalf("after update at its revision: %q", v)
	}
	// The revision is now stale: the update that made it so wins.
	if err := c.KVUpdateAt(ctx, BucketVotes, "default.at.a", []byte("stale"), rev); !errors.Is(err, ErrRevisionChanged) {
		t.Fatalf("update at a stale revision: %v", err)
	}
	if v, _ := c.KVGet(ctx, BucketVotes, "default.at.a"); string(v) != "mine" {
		t.Fatalf("a stale update replaced the value: %q", v)
	}
	rev, err = c.KVCreate(ctx, BucketVotes, "default.at.b", []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.KVDelete(ctx, BucketVotes, "default.at.b"); err != nil {
		t.Fatal(err)
	}
	if err := c.KVUpdateAt(ctx, BucketVotes, "default.at.b", []byte("revived"), rev); !errors.Is(err, ErrRevisionChanged) {
		t.Fatalf("update of a deleted key: %v", err)
	}
	if _, err := c.KVGet(ctx, BucketVotes, "default.at.b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a stale update revived a deleted key: %v", err)
	}
	if err := c.KVUpdateAt(ctx, BucketVotes, "default.at.c", []byte("x"), 0); !errors.Is(err, ErrRevisionChanged) {
		t.Fatalf("update without a revision: %v", err)
	}
}
