package farm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/queue"
)

// casRetries bounds the compare-and-set attempts of one update: each
// conflict means another process changed the record, which happens a
// few times at most for one derivation.
const casRetries = 50

// bucket opens PROVENIX_FARM through conn's JetStream handle: updates
// need the revision queue.Conn's KV calls keep to themselves, to run a
// side effect (a publish) between reading a record and writing it.
func bucket(ctx context.Context, conn *queue.Conn) (jetstream.KeyValue, error) {
	kv, err := conn.JetStream().KeyValue(ctx, queue.BucketFarm)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("farm: %w: no farm on this NATS (its bucket %s is made by 'provenix up' or 'provenix farm scheduler')", ErrNotFound, queue.BucketFarm)
	}
	if err != nil {
		return nil, fmt.Errorf("farm: bucket %s: %w", queue.BucketFarm, err)
	}
	return kv, nil
}

// getJSON reads key into v; found is false when the key has no value.
func getJSON(ctx context.Context, kv jetstream.KeyValue, key string, v any) (rev uint64, found bool, err error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("farm: get %s: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return 0, false, fmt.Errorf("farm: %w: record %s: %w", ErrInvalid, key, err)
	}
	return e.Revision(), true, nil
}

// update applies f to the record under key (a fresh zero T with found
// false when absent) and writes it with compare-and-set, again from a
// fresh read when another process changed it meanwhile. f returns
// whether to write, and an effect to run before the write (a publish
// that must happen before the record says it did; it must be idempotent,
// as f and the effect may run several times). It returns the record as
// last read or written.
func update[T any](ctx context.Context, kv jetstream.KeyValue, key string, f func(cur *T, found bool) (write bool, before func(context.Context) error, err error)) (*T, error) {
	for range casRetries {
		cur := new(T)
		rev, found, err := getJSON(ctx, kv, key, cur)
		if err != nil {
			return nil, err
		}
		write, before, err := f(cur, found)
		if err != nil {
			return nil, err
		}
		if !write {
			return cur, nil
		}
		if before != nil {
			if err := before(ctx); err != nil {
				return nil, err
			}
		}
		b, err := json.Marshal(cur)
		if err != nil {
			return nil, fmt.Errorf("farm: encode %s: %w", key, err)
		}
		if found {
			_, err = kv.Update(ctx, key, b, rev)
		} else {
			_, err = kv.Create(ctx, key, b)
		}
		if err == nil {
			return cur, nil
		}
		if !casConflict(err) {
			return nil, fmt.Errorf("farm: write %s: %w", key, err)
		}
	}
	return nil, fmt.Errorf("farm: %s: %w", key, queue.ErrCASConflict)
}

func casConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// list reads every record under prefix, by key (queue.Conn.KVList,
// which also tells a denied read from a slow one).
func list[T any](ctx context.Context, conn *queue.Conn, prefix string) (map[string]*T, error) {
	m, err := conn.KVList(ctx, queue.BucketFarm, prefix)
	if err != nil {
		return nil, fmt.Errorf("farm: list %s: %w", prefix, err)
	}
	out := make(map[string]*T, len(m))
	for k, b := range m {
		v := new(T)
		if err := json.Unmarshal(b, v); err != nil {
			return nil, fmt.Errorf("farm: %w: record %s: %w", ErrInvalid, k, err)
		}
		out[k] = v
	}
	return out, nil
}

func builderDigest(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:8])
}
