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
