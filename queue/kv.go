package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Key-value buckets of the pushers: votes (one per builder and output
// path), builder reputation, and entries waiting for their references
// (decided, ingested, not yet visible: see WaitingKey). All keep history 1
// and live on disk, so a pusher killed in between finds them intact.
const (
	BucketVotes    = "PROVENIX_VOTES"
	BucketBuilders = "PROVENIX_BUILDERS"
	BucketWaiting  = "PROVENIX_WAITING"
)

// WaitingKey is where the entry for storePath waits until its references
// are visible; all of them share the prefix WaitingPrefix.
func WaitingKey(tenant, storePath string) string {
	return WaitingPrefix + "." + tenant + "." + hashOf(storePath)
}

// WaitingPrefix is the key prefix of every waiting entry (KVList it).
const WaitingPrefix = "path"

// WaitersKey lists (as a JSON array of store paths) the entries waiting
// for missing: publishing missing reads it to find the entries it may
// release.
func WaitersKey(tenant, missing string) string {
	return "ref." + tenant + "." + hashOf(missing)
}

func hashOf(storePath string) string {
	hash, _, _ := strings.Cut(path.Base(storePath), "-")
	return hash
}

// ErrCASConflict means a compare-and-set update lost a race too often.
var ErrCASConflict = errors.New("queue: concurrent update, retries exhausted")

// VoteKey is where builder's vote on storePath lives: the tenant, the
// store path's hash part, and a digest of the builder id (ids may hold
// characters keys cannot). Votes on one path share the prefix VotePrefix.
func VoteKey(tenant, storePath, builderID string) string {
	return VotePrefix(tenant, storePath) + "." + builderKey(builderID)
}

// VotePrefix is the key prefix of all votes on storePath.
func VotePrefix(tenant, storePath string) string {
	return tenant + "." + hashOf(storePath)
}

// BuilderKey is the reputation key of a builder id.
func BuilderKey(builderID string) string { return builderKey(builderID) }

func builderKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

func (c *Conn) ensureKV(ctx context.Context, o StreamOptions) error {
	for _, cfg := range []jetstream.KeyValueConfig{
		{Bucket: BucketVotes, Description: "Provenix quorum votes: one per tenant, output path and builder", History: 1, Storage: jetstream.FileStorage, Replicas: o.Replicas, TTL: o.MaxAge * 4},
		{Bucket: BucketBuilders, Description: "Provenix builder reputation", History: 1, Storage: jetstream.FileStorage, Replicas: o.Replicas},
		{Bucket: BucketWaiting, Description: "Provenix entries waiting for their references, and who waits for what", History: 1, Storage: jetstream.FileStorage, Replicas: o.Replicas, TTL: o.MaxAge * 4},
	} {
		if err := c.ensureBucket(ctx, cfg); err != nil {
			return err
		}
	}
	return nil
}

// ensureBucket creates or updates a key-value bucket unless it is up to
// date already.
func (c *Conn) ensureBucket(ctx context.Context, cfg jetstream.KeyValueConfig) error {
	// The bucket's stream as nats.go makes it, for the fields we set.
	if c.upToDate(ctx, jetstream.StreamConfig{Name: kvStreamPrefix + cfg.Bucket, Storage: cfg.Storage, Replicas: cfg.Replicas,
		MaxAge: cfg.TTL, Retention: jetstream.LimitsPolicy, Discard: jetstream.DiscardNew}) {
		return nil
	}
	err := c.denyAware(ctx, jsAPIFor("KV_"+cfg.Bucket, ""), func(ctx context.Context) error {
		_, err := c.js.CreateOrUpdateKeyValue(ctx, cfg)
		return err
	})
	if err != nil {
		return fmt.Errorf("queue: ensure bucket %s: %w", cfg.Bucket, mapJSError(err))
	}
	return nil
}

func (c *Conn) kv(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	c.kvMu.Lock()
	defer c.kvMu.Unlock()
	if kv, ok := c.kvs[bucket]; ok {
		return kv, nil
	}
	kv, err := c.js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("queue: bucket %s: %w", bucket, err)
	}
	if c.kvs == nil {
		c.kvs = map[string]jetstream.KeyValue{}
	}
	c.kvs[bucket] = kv
	return kv, nil
}

// KVPut stores value under key.
func (c *Conn) KVPut(ctx context.Context, bucket, key string, value []byte) (err error) {
	ctx, finish := c.kvCall(ctx, bucket)
	defer finish(&err, "put", key)
	kv, err := c.kv(ctx, bucket)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, key, value); err != nil {
		return fmt.Errorf("queue: put %s/%s: %w", bucket, key, err)
	}
	return nil
}

// KVGet returns the value under key, or ErrNotFound.
func (c *Conn) KVGet(ctx context.Context, bucket, key string) (_ []byte, err error) {
	ctx, finish := c.kvCall(ctx, bucket)
	defer finish(&err, "get", key)
	kv, err := c.kv(ctx, bucket)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%s/%s: %w", bucket, key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: get %s/%s: %w", bucket, key, err)
	}
	return e.Value(), nil
}

// KVList returns every value whose key starts with prefix + "." (or every
// value for an empty prefix), by key: each key's value at one moment
// during the call, and every key that existed throughout the call.
//
// nats.go's watcher alone is not enough: it sends its "initial values
// delivered" marker once it has received as many messages as were
// pending when it started. A key put again during the list is delivered
// twice, and one put again before its turn is skipped (history 1 removed
// the old message) and comes back only after the marker, so the count
// was reached early and keys were missed (a sweep, `provenix status`).
// So after the marker the stream's leader lists the subjects the filter
// has (a stream info with a subject filter), and a key the watcher did
// not deliver is read on its own. Asking for the filter's last message
// instead needs chasing writes (it may never end while keys change) and
// on a cluster may be answered by a follower that lags.
func (c *Conn) KVList(ctx context.Context, bucket, prefix string) (_ map[string][]byte, err error) {
	ctx, finish := c.kvCall(ctx, bucket)
	defer finish(&err, "list", prefix)
	kv, err := c.kv(ctx, bucket)
	if err != nil {
		return nil, err
	}
	stream, err := c.kvStream(ctx, bucket)
	if err != nil {
		return nil, err
	}
	filter := ">"
	if prefix != "" {
		filter = prefix + ".>"
	}
	// Deletes too: a key deleted before the check is not read again.
	w, err := kv.Watch(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("queue: list %s/%s: %w", bucket, filter, err)
	}
	defer w.Stop()
	out, deleted := map[string][]byte{}, map[string]bool{}
	// nats.go sends its marker with a message only: when the messages
	// pending at the start expire before their turn, none comes.
	quiet := time.NewTimer(kvListQuiet)
	defer quiet.Stop()
	for marker := false; !marker; {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-quiet.C:
			marker = true
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return nil, fmt.Errorf("queue: list %s/%s: watcher stopped", bucket, filter)
			case e == nil:
				marker = true
			case e.Operation() == jetstream.KeyValuePut:
				out[e.Key()] = e.Value()
				delete(deleted, e.Key())
			default:
				delete(out, e.Key())
				deleted[e.Key()] = true
			}
			quiet.Reset(kvListQuiet)
		}
	}
	keys, err := kvKeys(ctx, stream, bucket, filter)
	if err != nil {
		return nil, err
	}
	for _, key := range keys {
		if _, ok := out[key]; ok || deleted[key] {
			continue
		}
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // deleted since
		}
		if err != nil {
			return nil, fmt.Errorf("queue: list %s/%s: %w", bucket, key, err)
		}
		out[key] = e.Value()
	}
	return out, nil
}

// KVGetLatest returns the value under key and its revision, or
// ErrNotFound (a key deleted too), as the stream's leader has it: every
// write acknowledged so far. KVGet's direct get may be answered by a
// follower that lags, and miss a write just made; read with this where
// one process's decision must see another's write (a race settled by
// who wrote first).
func (c *Conn) KVGetLatest(ctx context.Context, bucket, key string) (_ []byte, _ uint64, err error) {
	ctx, finish := c.kvCall(ctx, bucket)
	defer finish(&err, "get", key)
	m, err := c.leaderGet(ctx, kvStreamPrefix+bucket, 0, kvSubjectPrefix+bucket+"."+key)
	if errors.Is(err, ErrNotFound) {
		return nil, 0, fmt.Errorf("%s/%s: %w", bucket, key, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("queue: get %s/%s: %w", bucket, key, err)
	}
	if op := m.Header.Get(kvOperationHeader); op != "" {
		return nil, 0, fmt.Errorf("%s/%s: %w", bucket, key, ErrNotFound) // deleted or purged
	}
	return m.Data, m.Sequence, nil
}

// leaderGet reads a message of stream from its leader, which has every
// write acknowledged so far: the one at seq, or (seq 0) the last on
// subject; ErrNotFound when there is none.
func (c *Conn) leaderGet(ctx context.Context, stream string, seq uint64, subject string) (*nats.RawStreamMsg, error) {
	ctx, cancel := withDefaultTimeout(ctx, DefaultTimeout)
	defer cancel()
	var m *nats.RawStreamMsg
	err := c.denyAware(ctx, jsAPIFor(stream, ""), func(ctx context.Context) (err error) {
		// Without nats.DirectGet(): STREAM.MSG.GET, which the leader
		// answers.
		if seq != 0 {
			m, err = c.leader.GetMsg(stream, seq, nats.Context(ctx))
		} else {
			m, err = c.leader.GetLastMsg(stream, subject, nats.Context(ctx))
		}
		return err
	})
	if errors.Is(err, nats.ErrMsgNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, mapJSError(err)
	}
	return m, nil
}

// kvOperationHeader marks a key-value bucket's delete and purge markers.
const kvOperationHeader = "KV-Operation"

// KVKeys returns the keys of bucket that match filter (a key with NATS
// wildcards: "claim.s1.*"), as the stream's leader knows them: keys
// whose last write is a delete are listed too. Unlike a watcher's list
// it misses no key written meanwhile, and it reads no value.
func (c *Conn) KVKeys(ctx context.Context, bucket, filter string) (_ []string, err error) {
	ctx, finish := c.kvCall(ctx, bucket)
	defer finish(&err, "keys", filter)
	stream, err := c.kvStream(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return kvKeys(ctx, stream, bucket, filter)
}

func kvKeys(ctx context.Context, stream jetstream.Stream, bucket, filter string) ([]string, error) {
	subjPrefix := kvSubjectPrefix + bucket + "."
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subjPrefix+filter))
	if err != nil {
		return nil, fmt.Errorf("queue: list %s/%s: subjects: %w", bucket, filter, mapJSError(err))
	}
	keys := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		keys = append(keys, strings.TrimPrefix(subj, subjPrefix))
	}
	slices.Sort(keys)
	return keys, nil
}

// kvListQuiet is how long KVList waits for the watcher's first message
// or marker before it goes on without it.
const kvListQuiet = 2 * time.Second

// kvStream returns the stream of a key-value bucket, looked up once per
// Conn.
func (c *Conn) kvStream(ctx context.Context, bucket string) (jetstream.Stream, error) {
	c.kvMu.Lock()
	defer c.kvMu.Unlock()
	if s, ok := c.kvStreams[bucket]; ok {
		return s, nil
	}
	s, err := c.js.Stream(ctx, kvStreamPrefix+bucket)
	if err != nil {
		return nil, fmt.Errorf("queue: bucket %s: %w", bucket, mapJSError(err))
	}
	if c.kvStreams == nil {
		c.kvStreams = map[string]jetstream.Stream{}
	}
	c.kvStreams[bucket] = s
	return s, nil
}

// KVUpdate applies f to the value under key (nil when absent) and stores
// the result with compare-and-set, retrying on a concurrent change; f may
// run several times. f returning nil leaves the key alone.
func (c *Conn) KVUpdate(ctx context.Context, bucket, key string, f func(old []byte) ([]byte, error)) (err error) {
	ctx, finish := c.kvCall(ctx, bucket)
	defer finish(&err, "update", key)
	kv, err := c.kv(ctx, bucket)
	if err != nil {
		return err
	}
	for range 20 {
		var old []byte
		var rev uint64
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return fmt.Errorf("queue: update %s/%s: %w", bucket, key, err)
		default:
			old, rev = e.Value(), e.Revision()
		}
		nv, err := f(old)
		if err != nil || nv == nil {
			return err
		}
		if rev == 0 {
			_, err = kv.Create(ctx, key, nv)
		} else {
			_, err = kv.Update(ctx, key, nv, rev)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongLastSequence(err) {
			return fmt.Errorf("queue: update %s/%s: %w", bucket, key, err)
		}
	}
	return fmt.Errorf("%s/%s: %w", bucket, key, ErrCASConflict)
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// ErrKeyExists is returned by KVCreate when the key already has a value.
var ErrKeyExists = errors.New("queue: key exists")

// KVCreate stores value under key only if the key has none, and returns
// the revision it stored: one round trip for the common case of a first
// write.
func (c *Conn) KVCreate(ctx context.Context, bucket, key string, value []byte) (_ uint64, err error) {
	ctx, finish := c.kvCall(ctx, bucket)
	defer finish(&err, "create", key)
	kv, err := c.kv(ctx, bucket)
	if err != nil {
		return 0, err
	}
	rev, err := kv.Create(ctx, key, value)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || isWrongLastSequence(err) {
			return 0, fmt.Errorf("%s/%s: %w", bucket, key, ErrKeyExists)
		}
		return 0, fmt.Errorf("queue: create %s/%s: %w", bucket, key, err)
	}
	return rev, nil
}

// ErrRevisionChanged is returned by KVUpdateAt when the key is no longer
// at the revision the caller knows (changed, deleted or expired since).
var ErrRevisionChanged = errors.New("queue: key changed since")

// KVUpdateAt stores value under key if the key is still at revision rev,
// which the caller stored itself (KVCreate): a compare-and-set without
// the read KVUpdate starts with, since the caller knows the value.
func (c *Conn) KVUpdateAt(ctx context.Context, bucket, key string, value []byte, rev uint64) (err error) {
	ctx, finish := c.kvCall(ctx, bucket)
	defer finish(&err, "update", key)
	if rev == 0 {
		return fmt.Errorf("%s/%s: no revision: %w", bucket, key, ErrRevisionChanged)
	}
	kv, err := c.kv(ctx, bucket)
	if err != nil {
		return err
	}
	if _, err := kv.Update(ctx, key, value, rev); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || isWrongLastSequence(err) {
			return fmt.Errorf("%s/%s: %w", bucket, key, ErrRevisionChanged)
		}
		return fmt.Errorf("queue: update %s/%s: %w", bucket, key, err)
	}
	return nil
}

// KVDelete removes key.
func (c *Conn) KVDelete(ctx context.Context, bucket, key string) (err error) {
	ctx, finish := c.kvCall(ctx, bucket)
	defer finish(&err, "delete", key)
	kv, err := c.kv(ctx, bucket)
	if err != nil {
		return err
	}
	if err := kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("queue: delete %s/%s: %w", bucket, key, err)
	}
	return nil
}

// kvSubjects matches the requests of KV calls on bucket: its stream's
// JetStream API and its keys' subjects.
func kvSubjects(bucket string) func(string) bool {
	api := jsAPIFor(kvStreamPrefix+bucket, "")
	return func(s string) bool { return api(s) || strings.HasPrefix(s, kvSubjectPrefix+bucket+".") }
}

// KVDenyAware runs f, which calls bucket through JetStream() (package
// farm's compare-and-set updates, which need the revisions this
// package's KV calls keep to themselves), and returns an error matching
// ErrPermissionDenied at once when the server's permissions drop one of
// its requests, as this package's own KV calls do, instead of f's
// timeout.
func (c *Conn) KVDenyAware(ctx context.Context, bucket string, f func(ctx context.Context) error) error {
	return c.denyAware(ctx, kvSubjects(bucket), f)
}

// kvCall watches the KV call on bucket for permission denials (a role
// that may only read, see RolePermissions): the server drops a denied
// request without an answer, so without this the call would wait for its
// timeout. finish replaces the call's error with ErrPermissionDenied when
// that is what ended it.
func (c *Conn) kvCall(ctx context.Context, bucket string) (context.Context, func(errp *error, op, key string)) {
	dctx, cancel := context.WithCancelCause(ctx)
	unwatch := c.watchDeniedFunc(kvSubjects(bucket), cancel)
	return dctx, func(errp *error, op, key string) {
		unwatch()
		if *errp != nil {
			if cause := context.Cause(dctx); errors.Is(cause, ErrPermissionDenied) {
				*errp = fmt.Errorf("queue: %s %s/%s: %w", op, bucket, key, cause)
			}
		}
		cancel(nil)
	}
}
